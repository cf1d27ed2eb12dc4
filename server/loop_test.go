package server

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/internal/testkit"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/zap"
)

// twoLoops is an epoll engine with two loops: Serve gives each a socket
// of the listener's SO_REUSEPORT group.
func twoLoops() (relay.Engine, error) { return relay.NewEpollEngine(relay.EpollOptions{Loops: 2}) }

// With an engine whose loops accept, a client of a loopback backend is
// accepted, handshaken and relayed by one loop: no handshake goroutine.
func TestHandshakesRunOnTheLoop(t *testing.T) {
	b := startBackend(t, "b0")
	r := startServer(t, Options{}, twoLoops, b)
	testkit.Parallel(t, 40, 8, func(i int) error {
		c, err := testkit.DialFrom(testkit.ClientIP(i), r.addr)
		if err != nil {
			return err
		}
		defer c.Close()
		testkit.Greeting(t, c) // a silent client: the backend speaks first
		return nil
	})
	m := r.srv.Metrics()
	if loop, g := m.LoopHandshakes.Load(), m.GoroutineHandshakes.Load(); loop != 40 || g != 0 {
		t.Errorf("handshakes: %d on the loops, %d on goroutines; want 40 and 0", loop, g)
	}
	if lns := r.srv.Listeners(); len(lns) != 2 {
		t.Errorf("Listeners() = %d sockets, want the group of 2", len(lns))
	}
}

// A trusted upstream's header that has arrived whole is read on the loop;
// one still on its way goes to a handshake goroutine, which reads on from
// the bytes the loop took. So does a backend given by host name (not
// dialed from a loop).
func TestHandshakesHandedOver(t *testing.T) {
	b := startBackend(t, "b0")
	r := startServer(t, Options{Trusted: local, MaxConnections: 1}, twoLoops, b)
	hdr := pp.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 7}, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 80})
	// The first client holds the one slot, so that the second waits in the
	// backlog until its whole header has arrived: then it is accepted.
	first := testkit.DialHeader(t, "tcp", r.addr, hdr)
	testkit.Greeting(t, first)
	m := r.srv.Metrics()
	loop0, g0 := m.LoopHandshakes.Load(), m.GoroutineHandshakes.Load()
	c := testkit.DialHeader(t, "tcp", r.addr, hdr)
	first.Close()
	if _, client, _ := testkit.Greeting(t, c); client.String() != "192.0.2.7:7" {
		t.Errorf("backend saw %s", client)
	}
	c.Close()
	if loop, g := m.LoopHandshakes.Load()-loop0, m.GoroutineHandshakes.Load()-g0; loop != 1 || g != 0 {
		t.Errorf("whole upstream header: %d on the loops, %d on goroutines; want 1 and 0", loop, g)
	}
	testkit.WaitFor(t, "both closed", func() bool { return r.srv.Open() == 0 })
	raw, err := hdr.Format()
	if err != nil {
		t.Fatal(err)
	}
	split := testkit.Dial(t, "127.0.0.1", r.addr)
	split.Write(raw[:5])
	testkit.WaitFor(t, "the loop handed the split header over", func() bool { return m.GoroutineHandshakes.Load() == g0+1 })
	split.Write(append(raw[5:], "ping\n"...))
	_, client, br := testkit.Greeting(t, split)
	if client.String() != "192.0.2.7:7" {
		t.Errorf("split header: backend saw %s", client)
	}
	if line, _ := br.ReadString('\n'); line != "ping\n" {
		t.Errorf("split header: echo %q", line)
	}
	split.Close()

	_, port, _ := net.SplitHostPort(b.Addr())
	set, err := backend.NewSet([]backend.Spec{{Name: "byname", Address: "localhost:" + port}}, backend.Options{DialTimeout: time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	r2 := startServer(t, Options{}, twoLoops, b)
	r2.srv.SetBackends(set)
	c2 := testkit.Dial(t, "127.0.4.1", r2.addr)
	if name, _, _ := testkit.Greeting(t, c2); name != "b0" {
		t.Errorf("greeting from %q", name)
	}
	m = r2.srv.Metrics()
	if loop, g := m.LoopHandshakes.Load(), m.GoroutineHandshakes.Load(); loop != 0 || g != 1 {
		t.Errorf("host-name backend: %d on the loops, %d on goroutines; want 0 and 1", loop, g)
	}
}

// A silent client on a loop is relayed at once, but the backend's first
// bytes wait for its own: a PROXY header it sends late is refused, and it
// gets nothing of the backend's.
func TestLoopLateHeaderGetsNothing(t *testing.T) {
	b := startBackend(t, "b0")
	r := startServer(t, Options{SniffWait: time.Hour}, twoLoops, b)
	c := testkit.Dial(t, "127.0.4.2", r.addr)
	testkit.WaitFor(t, "the backend connected", func() bool { return len(b.Headers()) == 1 })
	c.Write([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"))
	if got, _ := testkit.ReadAll(t, c); got != "" {
		t.Errorf("a client refused for a late header got %q", got)
	}
	testkit.WaitFor(t, "the refusal logged", func() bool { return len(r.refusals("127.0.4.2")) == 1 })
	if e := r.refusals("127.0.4.2")[0]; !strings.Contains(e.ContextMap()["error"].(string), "PROXY header from untrusted peer") {
		t.Errorf("refusal: %v", e.ContextMap())
	}
}

// Many clients through a small MaxConnections on two loops: every one is
// served in turn, whichever loop's socket the kernel gave it to, however
// the loops' pauses and resumes interleave.
func TestLoopsShareMaxConnections(t *testing.T) {
	b := startBackend(t, "b0")
	r := startServer(t, Options{MaxConnections: 3, SniffWait: 10 * time.Millisecond}, twoLoops, b)
	testkit.Parallel(t, 120, 24, func(i int) error {
		c, err := testkit.DialFrom(testkit.ClientIP(i), r.addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(testkit.Guard))
		testkit.Greeting(t, c)
		return nil
	})
	testkit.WaitFor(t, "every connection closed", func() bool { return r.srv.Open() == 0 })
}

// A backend on a unix socket (launched workers with socket_dir) is dialed
// from the loop too: connect(2) on a unix socket never waits.
func TestUnixBackendOnTheLoop(t *testing.T) {
	ul, err := net.Listen("unix", t.TempDir()+"/w0")
	if err != nil {
		t.Fatal(err)
	}
	b := testkit.ServeBackend(t, "w0", ul, testkit.WaitHandlers(), testkit.ConnTimeout(testkit.Guard))
	set, err := backend.NewSet([]backend.Spec{{Name: "w0", Address: "unix:" + ul.Addr().String()}}, backend.Options{DialTimeout: time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	r := startServer(t, Options{}, twoLoops, startBackend(t, "unused"))
	r.srv.SetBackends(set)
	c := testkit.Dial(t, "127.0.4.3", r.addr)
	c.Write([]byte("ping\n"))
	name, client, br := testkit.Greeting(t, c)
	if name != "w0" || client.Addr().String() != "127.0.4.3" {
		t.Errorf("greeting %q %s", name, client)
	}
	if line, _ := br.ReadString('\n'); line != "ping\n" {
		t.Errorf("echo %q", line)
	}
	c.Close()
	m := r.srv.Metrics()
	if loop, g := m.LoopHandshakes.Load(), m.GoroutineHandshakes.Load(); loop != 1 || g != 0 {
		t.Errorf("unix backend: %d on the loops, %d on goroutines; want 1 and 0", loop, g)
	}
	if len(b.Headers()) != 1 {
		t.Errorf("the unix backend saw %d PROXY headers", len(b.Headers()))
	}
}

// A loop that paused at MaxConnections before the server had recorded its
// loops is resumed once they are: a slot freed in between found nothing to
// resume, and the next client waited for a close that never came.
func TestPausedBeforeRecordedResumes(t *testing.T) {
	release := make(chan struct{})
	testHookAccepting = func() { <-release }
	t.Cleanup(func() { testHookAccepting = nil })
	b := startBackend(t, "b0")
	r := startServer(t, Options{MaxConnections: 1, SniffWait: 10 * time.Millisecond}, twoLoops, b)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the server's cleanup

	first := testkit.Dial(t, "127.0.8.1", r.addr)
	testkit.Greeting(t, first)
	second := testkit.Dial(t, "127.0.8.2", r.addr) // in the backlog: the cap is reached
	testkit.WaitFor(t, "a loop paused at the cap", func() bool { return r.srv.Metrics().LimitWaits.Load() >= 1 })
	first.Close()
	testkit.WaitFor(t, "the first connection released", func() bool { return r.srv.Open() == 0 })
	once.Do(func() { close(release) }) // the loops are recorded now
	if name, _, _ := testkit.Greeting(t, second); name != "b0" {
		t.Errorf("the second client got %q", name)
	}
}
