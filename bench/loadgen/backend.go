package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	pp "github.com/pires/go-proxyproto"
)

// backend is a PROXY-aware test server. Every connection must open with a
// PROXY header (v1 or v2, REQUIRE policy); then the first byte selects the
// command (see proto.go). Counters are atomics; they are printed on exit.
type backend struct {
	headerTimeout time.Duration
	errLog        io.Writer // where the first header errors are reported

	conns      atomic.Int64 // accepted
	v1, v2     atomic.Int64 // headers seen, by version
	local      atomic.Int64 // v2 LOCAL headers
	headerErrs atomic.Int64 // connections without a valid header
}

func runBackend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9001", "comma-separated listen addresses")
	timeout := fs.Duration("header-timeout", 5*time.Second, "PROXY header read timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b := &backend{headerTimeout: *timeout, errLog: os.Stderr}
	var lns []net.Listener
	for _, addr := range strings.Split(*listen, ",") {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		lns = append(lns, ln)
		go b.serve(ln)
	}
	fmt.Println("backend ready on", *listen)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	for _, ln := range lns {
		ln.Close()
	}
	fmt.Fprintln(os.Stderr, b.summary())
	return nil
}

func (b *backend) summary() string {
	return fmt.Sprintf("backend: conns=%d proxy_v1=%d proxy_v2=%d local=%d header_errors=%d",
		b.conns.Load(), b.v1.Load(), b.v2.Load(), b.local.Load(), b.headerErrs.Load())
}

// serve accepts until ln is closed, backing off on temporary errors (such as
// running out of file descriptors).
func (b *backend) serve(ln net.Listener) {
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "backend: accept: %v (retry in %v)\n", err, backoff)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		b.conns.Add(1)
		go b.handle(c)
	}
}

// handle owns raw and closes it. The first read carries the command byte
// and usually the whole first message; echo answers it with one write, so a
// 64-byte request crosses the proxy as one segment each way.
func (b *backend) handle(raw net.Conn) {
	defer raw.Close()
	c := pp.NewConn(raw, pp.WithPolicy(pp.REQUIRE), pp.SetReadHeaderTimeout(b.headerTimeout))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if n == 0 {
		if c.ProxyHeader() == nil && err != nil {
			if k := b.headerErrs.Add(1); k <= 10 {
				fmt.Fprintf(b.errLog, "backend: %v: PROXY header: %v\n", raw.RemoteAddr(), err)
			}
		}
		return
	}
	h := c.ProxyHeader()
	b.count(h)
	first := bytes.NewReader(buf[1:n])
	rest := io.MultiReader(first, c)
	switch buf[0] {
	case cmdEcho:
		echo(c, buf, n)
	case cmdAddr:
		io.WriteString(c, describeHeader(h)+"\n")
	case cmdSink:
		// After the first Read, c has handed over everything it buffered
		// while parsing the header, so the raw socket is safe to read.
		if size, err := readSize(rest); err == nil && size >= int64(first.Len()) {
			size -= int64(first.Len())
			if recvDiscard(raw.(*net.TCPConn), size) == nil {
				c.Write([]byte{ackByte})
			}
		}
	case cmdSource:
		if size, err := readSize(rest); err == nil {
			sendZeros(raw.(*net.TCPConn), size)
		}
	}
}

func (b *backend) count(h *pp.Header) {
	switch {
	case h.Version == 1:
		b.v1.Add(1)
	case h.Command.IsLocal():
		b.local.Add(1)
	default:
		b.v2.Add(1)
	}
}

// describeHeader renders h as "v<version> <source> <destination>", or
// "v2 LOCAL" for a LOCAL header.
func describeHeader(h *pp.Header) string {
	if h.Command.IsLocal() {
		return fmt.Sprintf("v%d LOCAL", h.Version)
	}
	return fmt.Sprintf("v%d %v %v", h.Version, h.SourceAddr, h.DestinationAddr)
}

// echo writes buf[:n], then copies c back to itself until EOF.
func echo(c net.Conn, buf []byte, n int) {
	for {
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
		var err error
		if n, err = c.Read(buf); n == 0 && err != nil {
			return
		}
	}
}
