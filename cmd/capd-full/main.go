// Command capd-full is every capd command, the agent among them, as one
// cobra tree with one file per subcommand. Users run capd (cmd/capd),
// which runs the start-up commands itself and executes capd-full, beside
// it, for the rest (docs/ARCHITECTURE.md, "Two binaries").
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
