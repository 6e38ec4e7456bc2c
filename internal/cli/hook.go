package cli

import (
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/hooks"
)

// DefaultHookTimeout bounds the hook's conversation with the agent, so
// that a stalled agent cannot stall container creation.
const DefaultHookTimeout = 5 * time.Second

// Hook is capd hook, the OCI hook: its flags and what it does.
type Hook struct {
	Socket    string
	HardenAll bool
	Timeout   time.Duration
}

// Flags defines the hook's flags on fs.
func (h *Hook) Flags(fs *pflag.FlagSet) {
	fs.StringVar(&h.Socket, "socket", "", "the agent's socket (default $CAPD_SOCKET or "+client.DefaultSocket+")")
	fs.DurationVar(&h.Timeout, "timeout", DefaultHookTimeout, "give up on an agent that has not answered within this long (0: wait forever)")
	fs.BoolVar(&h.HardenAll, "harden-all", false, "give every container, not only annotated ones, a /proc that hides other users' processes")
}

// Args checks the hook's arguments: none, the state comes on stdin.
func (h *Hook) Args(args []string) error {
	if len(args) != 0 {
		return UsageErr("capd hook takes no arguments (the state comes on stdin) (see 'capd hook --help')")
	}
	if h.Timeout < 0 {
		return UsageErr("--timeout must not be negative, not %v", h.Timeout)
	}
	return nil
}

// Run runs the hook for the container whose state is on stdin.
func (h *Hook) Run(stdin io.Reader, stderr io.Writer) error {
	socket := h.Socket
	if socket == "" {
		socket = client.SocketPath()
	}
	return hooks.Run(hooks.Options{Socket: socket, Stdin: stdin, Stderr: stderr, HardenAll: h.HardenAll, Timeout: h.Timeout})
}
