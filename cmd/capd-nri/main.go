// Command capd-nri is capd's NRI plugin: on a Kubernetes node it connects
// to containerd's NRI socket and to the capd agent, gives annotated
// containers /run/capd, and registers them with the agent as
// pod:NAMESPACE/POD/NAME (see package nri). It is a binary of its own so
// that NRI's protobuf and ttrpc code (about 1.3 ms of package
// initialisation measured here) stays out of every capd start.
//
// It reads [nri] from the capd configuration (enable, socket,
// plugin_name, plugin_index, agent_socket, binary), reconnects when
// containerd restarts, registers running containers again when the agent
// restarts, and exits on SIGTERM or SIGINT. Exit codes: 0 stopped by a
// signal, 1 failure, 2 usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"github.com/containerd/nri/pkg/stub"
	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/agent/policy"
	"github.com/capd-dev/capd/client"
	"github.com/capd-dev/capd/nri"
)

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("capd-nri", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", defaultConfig(), "capd configuration file, read for its [nri] table (and its conf.d drop-ins)")
	dial := fs.String("dial", "", "where this process reaches the agent's socket, if not at nri.agent_socket (a plugin in a container of its own)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: capd-nri [--config FILE] [--dial SOCKET] [--log-level LEVEL]

capd's NRI plugin for containerd: gives containers of pods annotated
io.capd.acquire=OWNER:NAME[,...] (or io.capd.acquire/container.NAME for one
container) the agent's socket and the capd binary at /run/capd, registers
them with the agent as pod:NAMESPACE/POD/NAME, and with io.capd.required=true
fails the creation of a container that could not acquire its entries.

Configuration ([nri] in capd.toml; enable = true is required):
  socket        containerd's NRI socket (default %s)
  plugin_name   the plugin's name (default %s)
  plugin_index  two digits ordering plugins (default %s)
  agent_socket  the agent's socket, as the host sees it (default %s)
  binary        the static capd binary, as the host sees it (default %s)

Options:
`, policy.DefaultNRISocket, policy.DefaultNRIPluginName, policy.DefaultNRIPluginIndex, policy.DefaultNRIAgentSocket, policy.DefaultNRIBinary)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "capd-nri: takes no arguments (see capd-nri --help)\n")
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "capd-nri: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	// As capd agent: only the default file may be missing (deny all).
	missingOK := os.Getenv("CAPD_CONFIG") == ""
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "config" {
			missingOK = false
		}
	})
	cfg, err := policy.Load(*config, missingOK)
	if err != nil {
		fmt.Fprintf(stderr, "capd-nri: load config: %v\n", err)
		return 1
	}
	if !cfg.NRI.Enable {
		fmt.Fprintf(stderr, "capd-nri: [nri] enable is not true in %v: nothing to do\n", cfg.Files)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	if err := serve(ctx, log, &cfg.NRI, *dial); err != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "capd-nri: %v\n", err)
		return 1
	}
	return 0
}

// serve runs the plugin until ctx ends, connecting to the runtime again
// whenever the connection ends (a containerd restart).
func serve(ctx context.Context, log *slog.Logger, cfg *policy.NRIConfig, dial string) error {
	if dial == "" {
		dial = cfg.AgentSocket
	}
	p := nri.New(nri.Options{
		Log:         log,
		AgentSocket: cfg.AgentSocket,
		Binary:      cfg.Binary,
		Dial:        func() (*client.Client, error) { return client.Dial(dial) },
	})
	defer p.Close()
	go p.WatchAgent(ctx)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		s, err := stub.New(p, stub.WithSocketPath(cfg.Socket), stub.WithPluginName(cfg.PluginName), stub.WithPluginIdx(cfg.PluginIndex),
			stub.WithOnClose(func() { log.Warn("the runtime closed the NRI connection; reconnecting") }))
		if err != nil {
			return err
		}
		start := time.Now()
		err = s.Run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		log.Info("NRI connection ended; connecting again", "socket", cfg.Socket, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

// defaultConfig is $CAPD_CONFIG, else policy.DefaultPath.
func defaultConfig() string {
	if p := os.Getenv("CAPD_CONFIG"); p != "" {
		return p
	}
	return policy.DefaultPath
}
