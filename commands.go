package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/hello"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
)

// checkConfig validates a config file: `stickyd check-config [FILE]`.
func checkConfig(c *cli.Context) error {
	if c.NArg() > 1 {
		return usageError("check-config takes at most one FILE")
	}
	if c.NArg() == 1 {
		if err := c.Set("config", c.Args().First()); err != nil {
			return usageError("%v", err)
		}
	}
	cfg, err := loadConfig(c, nil)
	if err != nil {
		return err
	}
	fmt.Printf("config ok: listen %s, %d backends", cfg.ListenAddr(), len(cfg.Backends))
	if cfg.Workers != nil {
		fmt.Printf(", %d workers", cfg.Workers.WorkerCount())
	}
	fmt.Println()
	return nil
}

// lookup prints "<ip> <backend name>" for each IP given as an argument, or
// read from stdin one per line. Every backend counts as up: the answer is
// the IP's home backend. Invalid IPs are reported on stderr with their line
// number and skipped; the exit status is then 1.
func lookup(c *cli.Context) error {
	cfg, err := loadConfig(c, nil)
	if err != nil {
		return err
	}
	nop := zap.NewNop()
	specs, _, err := backendSpecs(cfg, nop, func() *backend.Set { return nil })
	if err != nil {
		return usageError("%v", err)
	}
	set, err := newSet(cfg, specs, nop)
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
	if c.NArg() > 0 {
		for i, s := range c.Args().Slice() {
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

// helloWorker runs the built-in demo worker until SIGTERM or SIGINT.
func helloWorker(c *cli.Context) error {
	log, err := zap.NewProduction()
	if err != nil {
		return err
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return hello.Serve(ctx, log.Named("hello"))
}
