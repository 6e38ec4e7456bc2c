// Command execonly execs its arguments and does nothing else: the start-up
// floor of any Go program in front of a workload, for the one-shot
// benchmark (tests/oneshot_bench_test.go).
package main

import (
	"os"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		os.Exit(2)
	}
	err := syscall.Exec(os.Args[1], os.Args[1:], os.Environ())
	os.Stderr.WriteString("execonly: " + err.Error() + "\n")
	os.Exit(126)
}
