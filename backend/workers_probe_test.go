package backend

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

// The readiness probe opens with a PROXY LOCAL header when SendProxy is
// set (what a worker requiring the header accepts without a log line), and
// sends nothing otherwise.
func TestReadinessProbeSendsLocalHeader(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version byte
		want    string // what the worker reads before EOF
	}{
		{"none", 0, ""},
		{"v1", 1, "PROXY UNKNOWN\r\n"},
		{"v2", 2, "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"}, // signature, v2 LOCAL, UNSPEC, length 0
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- "accept: " + err.Error()
					return
				}
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(testkit.Guard))
				b, err := io.ReadAll(c)
				if err != nil {
					got <- "read: " + err.Error()
					return
				}
				got <- string(b)
			}()
			s := &Supervisor{cfg: WorkerConfig{SendProxy: tc.version}, timing: fastTiming()}
			if !s.accepting(&workerAddr{dest: *newDest(ln.Addr().String())}) {
				t.Fatal("probe of a listening worker: not accepting")
			}
			var b string
			select {
			case b = <-got:
			case <-time.After(testkit.Guard):
				t.Fatal("worker read nothing within the guard")
			}
			if b != tc.want {
				t.Fatalf("worker read %q, want %q", b, tc.want)
			}
			if tc.version == 0 {
				return
			}
			h, err := pp.Read(bufio.NewReader(strings.NewReader(b)))
			if err != nil || h.Version != tc.version || (tc.version == 2 && h.Command != pp.LOCAL) {
				t.Fatalf("go-proxyproto reads the probe's header as %+v, %v", h, err)
			}
		})
	}
}
