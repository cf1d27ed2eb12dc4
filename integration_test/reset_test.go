package integration_test

// A backend that answers and then resets (closes with the request unread,
// as Node's http server does on a bad request) still gets its whole answer
// to the client through stickyd: Linux keeps the bytes received before an
// RST readable, and stickyd must deliver them before it closes.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stickyd/stickyd/internal/testkit"
)

var resetEngines = []string{"epoll", "goroutine"}

// longReply is an HTTP 400 head and numbered filler: more than stickyd
// and the client's socket hold while the client does not read.
func longReply() []byte {
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
	for i := 0; b.Len() < 8<<20; i++ {
		fmt.Fprintf(&b, "%07d\n", i)
	}
	return b.Bytes()
}

// tcpInfo is c's TCP_INFO, or nil.
func tcpInfo(c *net.TCPConn) *unix.TCPInfo {
	var info *unix.TCPInfo
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	}
	return info
}

// stallThenReset is the backend: it reads the start of the request, then
// writes reply until stickyd has stopped reading with bytes unread in its
// receive queue (its client does not read; reply is more than the client's
// side holds), then resets (SO_LINGER 0). It sends on acked how many bytes
// stickyd's kernel had acknowledged, -1 on failure.
func stallThenReset(ln net.Listener, reply []byte, acked chan<- int64) {
	c, err := ln.Accept()
	if err != nil {
		acked <- -1
		return
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(testkit.Guard))
	if _, err := io.ReadFull(tc, make([]byte, 16)); err != nil { // the rest stays unread
		acked <- -1
		return
	}
	wrote := make(chan error, 1)
	go func() { _, err := tc.Write(reply); wrote <- err }() // fails at the reset if still blocked
	for end := time.Now().Add(testkit.Guard); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if n := stalled(tc, wrote, len(reply)); n > 0 {
			tc.SetLinger(0)
			tc.Close()
			acked <- n
			return
		}
	}
	acked <- -1
}

// stalled returns how many bytes of the reply stickyd's kernel has
// acknowledged once no more will move: its socket advertises a zero window
// (its queue is full), or the whole reply was written and acknowledged
// (autotuning grew its queue that far). It returns 0 before that.
func stalled(c *net.TCPConn, wrote chan error, size int) int64 {
	info := tcpInfo(c)
	switch {
	case info == nil:
		return 0
	case info.Snd_wnd == 0 && info.Unacked == 0 && info.Bytes_acked > 0:
		return int64(info.Bytes_acked)
	case len(wrote) > 0 && info.Unacked == 0 && info.Notsent_bytes == 0:
		if err := <-wrote; err == nil {
			return int64(size)
		}
	}
	return 0
}

// TestBackendResetKeepsReply: the client gets every byte the backend's
// RST caught in stickyd's queue (at least all that stickyd's kernel had
// acknowledged), then an end, though it uploads all along; the debug line
// still names the reset.
func TestBackendResetKeepsReply(t *testing.T) {
	reply := longReply()
	for _, engine := range resetEngines {
		t.Run(engine, func(t *testing.T) {
			ln := testkit.Listen(t, "127.0.0.1:0")
			acked := make(chan int64, 1)
			go stallThenReset(ln, reply, acked)
			adm := testkit.FreePort(t)
			p := startStickyd(t, "--backend", "app="+ln.Addr().String(), "--send-proxy", "none",
				"--engine", engine, "--log-level", "debug", "--admin", adm)
			c := testkit.Dial(t, "127.0.0.1", p.addr)
			c.Write([]byte("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"))
			go upload(c) // still uploading while it reads: the backend never reads it
			n := testkit.Await(t, acked, "the backend did not stall")
			if n < 0 {
				t.Fatal("the backend failed before its reset")
			}
			got := readUntilEnd(t, c)
			if int64(len(got)) < n || !bytes.Equal(got, reply[:len(got)]) {
				t.Fatalf("client got %d bytes (a prefix of the reply: %v); stickyd had acknowledged %d",
					len(got), bytes.Equal(got, reply[:min(len(got), len(reply))]), n)
			}
			t.Logf("client got %d bytes; stickyd had acknowledged %d", len(got), n)
			testkit.WaitFor(t, "the connection's end logged", func() bool {
				return strings.Contains(p.stderr.String(), "reset by peer")
			})
			if strings.Contains(p.stderr.String(), "were not delivered") { // the epoll engine counts them
				t.Errorf("stickyd's end line says bytes were not delivered")
			}
			if v := opsMetric(t, adm, "stickyd_connections_closing"); v != 0 {
				t.Errorf("stickyd_connections_closing = %v after the end, want 0", v)
			}
			if v := opsMetric(t, adm, "stickyd_closes_stalled_total"); v != 0 {
				t.Errorf("stickyd_closes_stalled_total = %v, want 0 (the client took the reply)", v)
			}
		})
	}
}

// upload writes to c until a write fails: stickyd closed, or the test
// did. A client that still sends when stickyd closes its side would get
// an RST, and lose what stickyd had not yet sent it, unless stickyd waits
// for it to take that first (see relay/closing.go).
func upload(c net.Conn) {
	chunk := make([]byte, 64<<10)
	for {
		if _, err := c.Write(chunk); err != nil {
			return
		}
	}
}

// readUntilEnd reads c until EOF or a reset; anything else fails t.
func readUntilEnd(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testkit.Guard))
	var got bytes.Buffer
	if _, err := io.Copy(&got, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after %d bytes: %v (want EOF or a reset)", got.Len(), err)
	}
	return got.Bytes()
}

// nodeStrict is a plain Node http server: a malformed request gets Node's
// own "400 Bad Request", and the socket is destroyed with the rest of the
// request unread, so its kernel sends an RST right behind the 400.
const nodeStrict = `require('http').createServer((req, res) => res.end('ok\n'))
  .listen(+process.argv[2], '127.0.0.1');
`

// TestNodeBadRequestThroughStickyd: a malformed request with a long body
// still coming gets Node's 400 through stickyd, not an empty reply.
func TestNodeBadRequestThroughStickyd(t *testing.T) {
	node := startScriptBackend(t, "node", nodeStrict)
	req := append([]byte("POST / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\nContent-Length: 262144\r\n\r\n"), make([]byte, 256<<10)...)
	for _, engine := range resetEngines {
		t.Run(engine, func(t *testing.T) {
			p := startStickyd(t, "--backend", "app="+node, "--send-proxy", "none", "--engine", engine)
			for i := range 20 {
				c := testkit.Dial(t, "127.0.0.1", p.addr)
				go c.Write(req) // fails once stickyd has closed: the reply is read meanwhile
				if got := string(readUntilEnd(t, c)); !strings.HasPrefix(got, "HTTP/1.1 400 Bad Request\r\n") {
					t.Fatalf("request %d: client got %q, want Node's 400", i, got)
				}
				c.Close()
			}
		})
	}
}
