// Command capd is the capd agent and its command-line client: one binary
// with one subcommand per file in this directory.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
