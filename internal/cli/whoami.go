package cli

import (
	"fmt"
	"io"

	"github.com/capd-dev/capd/client"
)

// Whoami is capd whoami without --json: the identity the agent sees.
func Whoami(stdout io.Writer) error {
	id, err := Ask((*client.Client).Whoami)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, Escape(id.Name))
	return nil
}
