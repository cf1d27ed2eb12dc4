package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/daemon"
	"github.com/stickyd/stickyd/logging"
	"github.com/urfave/cli/v2"
)

// serve is the default action: run the proxy (package daemon) with the
// config of the file and flags, read again on every SIGHUP.
func serve(c *cli.Context) error {
	argv := c.Args().Slice()
	load := func() (*config.Config, error) { return loadConfig(c, argv) }
	err := daemon.Run(daemon.Options{Load: load, Version: buildVersion()})
	if errors.Is(err, daemon.ErrConfig) {
		return usageError("%v", err)
	}
	return err
}

// checkConfig validates a config file: `stickyd check-config [FLAGS]
// [FILE] [-- COMMAND ...]`, with the flags and worker command stickyd
// itself takes, through the same path as serve: it accepts exactly what
// serve accepts.
func checkConfig(c *cli.Context) error {
	args, argv := splitCommand(c)
	switch {
	case len(args) > 1 && strings.HasPrefix(args[1], "-"):
		return usageError("check-config: put the flags before FILE (got %q after it)", args[1:])
	case len(args) > 1:
		return usageError("check-config takes at most one FILE, got %q (a worker command goes after --)", args)
	case len(args) == 1:
		if err := c.Set("config", args[0]); err != nil {
			return usageError("%v", err)
		}
	}
	cfg, err := loadConfig(c, argv)
	if err != nil {
		return err
	}
	// The daemon reads the token at start (not on reload): so does this.
	if _, err := cfg.AdminToken(os.Getenv(config.EnvAdminToken)); err != nil {
		return usageError("%v", err)
	}
	// The daemon opens the access log at start and on reload: this looks
	// whether it could, creating nothing.
	if err := logging.CheckAccess(cfg.AccessLog); err != nil {
		return usageError("%v", err)
	}
	fmt.Printf("config ok: listen %s, %d backends", cfg.ListenAddr(), len(cfg.Backends))
	if cfg.Workers != nil {
		fmt.Printf(", %d workers", cfg.Workers.WorkerCount())
	}
	fmt.Println()
	return nil
}

// lookup prints "<ip> <backend name>" for each IP given as an argument, or
// read from stdin one per line. It takes stickyd's own flags and worker
// command (`stickyd lookup --workers 4 [IP ...] [-- node app.js]`); the
// command is not needed, since a worker's name depends only on its slot.
// Every backend counts as up: the answer is the IP's home backend, the one
// the live proxy picks. Invalid IPs are reported on stderr with their line
// number and skipped; the exit status is then 1.
func lookup(c *cli.Context) error {
	ips, argv := splitCommand(c)
	cfg, err := loadRoutingConfig(c, argv)
	if err != nil {
		return err
	}
	set, err := daemon.RoutingSet(context.Background(), cfg, func(err error) {
		fmt.Fprintln(os.Stderr, "stickyd lookup: dns backends did not resolve:", err)
	})
	if err != nil {
		return usageError("%v", err)
	}
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer out.Flush()
	var bad int
	each := func(line int, s string) {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			bad++
			fmt.Fprintf(os.Stderr, "line %d: invalid IP %q\n", line, s)
			return
		}
		out.WriteString(s)
		out.WriteByte(' ')
		out.WriteString(set.Preferred(ip.Unmap()).Name)
		out.WriteByte('\n')
	}
	if len(ips) > 0 {
		for i, s := range ips {
			each(i+1, s)
		}
	} else if err := eachLine(os.Stdin, each); err != nil {
		return fmt.Errorf("read stdin: %w", err)
	}
	if bad > 0 {
		out.Flush()
		return cli.Exit(fmt.Sprintf("stickyd lookup: %d invalid IPs", bad), 1)
	}
	return nil
}

// splitCommand splits a subcommand's arguments into its own (IPs, a FILE)
// and the worker command after "--". The flag parser drops a "--" that
// directly follows the flags, so os.Args tells where it was.
func splitCommand(c *cli.Context) (args, command []string) {
	all := c.Args().Slice()
	if i := slices.Index(all, "--"); i >= 0 {
		return all[:i], all[i+1:]
	}
	if i := slices.Index(os.Args, "--"); i >= 0 && len(all) > 0 && slices.Equal(os.Args[i+1:], all) {
		return nil, all
	}
	return all, nil
}

// eachLine calls fn for every non-empty line of r.
func eachLine(r io.Reader, fn func(line int, s string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		if s := strings.TrimSpace(sc.Text()); s != "" {
			fn(n, s)
		}
	}
	return sc.Err()
}
