package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"time"
)

// runStream moves -bytes through the proxy client->backend (the backend
// sinks them), then backend->client (the backend sources them), one
// connection each, and reports MB/s each way and the proxy's CPU s per GB.
func runStream(args []string) error {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	cf := addClientFlags(fs)
	size := fs.Int64("bytes", 1<<30, "bytes each way")
	timeout := fs.Duration("timeout", 2*time.Minute, "deadline per direction")
	if err := fs.Parse(args); err != nil {
		return err
	}
	src, err := parseSourceIPs(cf.src)
	if err != nil {
		return err
	}
	cpu0, err := proxyTicks(cf.pid)
	if err != nil {
		return err
	}
	up, err := timedTransfer(src, cf.target, *size, *timeout, upload)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	down, err := timedTransfer(src, cf.target, *size, *timeout, download)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	cpu1, err := proxyTicks(cf.pid)
	if err != nil {
		return err
	}
	fmt.Printf("stream %s: %d bytes each way\n", cf.target, *size)
	r := &results{f: cf}
	r.add("up_MBps", float64(*size)/1e6/up.Seconds())
	r.add("down_MBps", float64(*size)/1e6/down.Seconds())
	if cf.pid != 0 {
		r.add("cpu_s_per_GB", float64(cpu1-cpu0)/clockTicksPerSecond/(2*float64(*size)/1e9))
	}
	return r.flush()
}

// timedTransfer dials, runs xfer and returns how long xfer took.
func timedTransfer(src *sourceIPs, target string, n int64, timeout time.Duration,
	xfer func(c *net.TCPConn, n int64) error) (time.Duration, error) {
	c, err := dialFrom(src.Next(), target, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	start := time.Now()
	if err := xfer(c, n); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// upload sends n bytes and waits for the backend's acknowledgement.
func upload(c *net.TCPConn, n int64) error {
	if _, err := c.Write(sizedCommand(cmdSink, n)); err != nil {
		return err
	}
	if err := sendZeros(c, n); err != nil {
		return err
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil || ack[0] != ackByte {
		return fmt.Errorf("no acknowledgement: %v", err)
	}
	return nil
}

// download asks the backend for n bytes and reads them.
func download(c *net.TCPConn, n int64) error {
	if _, err := c.Write(sizedCommand(cmdSource, n)); err != nil {
		return err
	}
	return recvDiscard(c, n)
}
