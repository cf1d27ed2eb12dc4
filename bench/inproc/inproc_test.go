// Package inproc benchmarks stickyd's connection path in one process, for
// profiling with the usual go test flags (the proxy binary takes no
// profiling flags):
//
//	go test ./bench/inproc -run - -bench . -benchmem -memprofile mem.out -cpuprofile cpu.out
//	go tool pprof -sample_index=alloc_space -top mem.out
//
// The client and the backend run in the same process, so allocs/op counts
// theirs too; the profiles tell the proxy's share (packages server, relay,
// backend, proxyproto).
package inproc

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/relay"
	"github.com/stickyd/stickyd/server"
	"go.uber.org/zap"
)

// echoBackend reads the PROXY v2 header, then echoes until EOF.
func echoBackend(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var h [16]byte
				if _, err := io.ReadFull(c, h[:]); err != nil {
					return
				}
				if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint16(h[14:]))); err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// proxy starts a Server on the epoll engine in front of one echo backend.
func proxy(b *testing.B) string {
	set, err := backend.NewSet([]backend.Spec{{Name: "b0", Address: echoBackend(b)}}, backend.Options{}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	eng, err := relay.NewEpollEngine(relay.EpollOptions{})
	if err != nil {
		b.Fatal(err)
	}
	srv := server.New(server.Options{SendProxy: 2}, set, eng, zap.NewNop())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// BenchmarkShortConnection is the harness's rate scenario: connect, 64 B
// each way, close.
func BenchmarkShortConnection(b *testing.B) {
	addr := proxy(b)
	msg := make([]byte, 64)
	b.ReportAllocs()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 64)
		for pb.Next() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(msg); err != nil {
				b.Error(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Error(err)
			}
			c.Close()
		}
	})
}
