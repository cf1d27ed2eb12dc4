package relay

import (
	"bufio"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"golang.org/x/sys/unix"
)

// echoAcceptor relays every client it is handed to an echo backend, dialed
// with DialNow, on the loop that accepted it. It counts the clients per
// loop, and at limit open slots it refuses to admit (limit 0: no limit).
type echoAcceptor struct {
	t       *testing.T
	eng     *EpollEngine
	backend string

	mu      sync.Mutex
	perLoop map[Starter]int
	handled chan string // the client's address, per Handle

	limit    atomic.Int64
	silent   bool // no header: the backend sends nothing unless the client does
	slots    atomic.Int64
	refused  chan struct{} // one per Admit that said no
	acceptEr chan error
}

func newEchoAcceptor(t *testing.T, eng *EpollEngine, backend string) *echoAcceptor {
	return &echoAcceptor{t: t, eng: eng, backend: backend, perLoop: make(map[Starter]int),
		handled: make(chan string, 1024), refused: make(chan struct{}, 1024), acceptEr: make(chan error, 16)}
}

func (a *echoAcceptor) Admit() bool {
	if limit := a.limit.Load(); limit > 0 && a.slots.Add(1) > limit {
		a.slots.Add(-1)
		a.refused <- struct{}{}
		return false
	}
	return true
}

func (a *echoAcceptor) Unadmit() {
	if a.limit.Load() > 0 {
		a.slots.Add(-1)
	}
}

func (a *echoAcceptor) AcceptError(err error) time.Duration {
	a.acceptEr <- err
	return time.Millisecond
}

func (a *echoAcceptor) Handle(s *Socket, on Starter) {
	_, remote := s.AddrPorts()
	a.mu.Lock()
	a.perLoop[on]++
	a.mu.Unlock()
	b, err := a.eng.DialNow("tcp", a.backend)
	if err != nil {
		a.t.Errorf("DialNow %s: %v", a.backend, err)
		s.Close()
		a.Unadmit()
		return
	}
	var header []byte
	if !a.silent {
		header = []byte("hello\n")
	}
	on.Start(Pair{Client: s, Backend: b.(*Socket), Header: header, Done: func(Stats) { a.Unadmit() }})
	a.handled <- remote.String()
}

// echoBackend answers each connection's lines with the same lines.
func echoBackend(t *testing.T) string {
	t.Helper()
	var tr testkit.Tracked
	tr.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(c net.Conn) { io.Copy(c, c); c.Close() }, testkit.WaitHandlers())
	return tr.Addr()
}

// newLoopEngine is an epoll engine with n loops, closed at cleanup.
func newLoopEngine(t *testing.T, n int) *EpollEngine {
	t.Helper()
	eng, err := NewEpollEngine(EpollOptions{Loops: n})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng.(*EpollEngine)
}

// acceptOn gives each of eng's loops a socket of ln's group.
func acceptOn(t *testing.T, eng *EpollEngine, a Acceptor) (*Accepting, string) {
	t.Helper()
	ln := testkit.Listen(t, "127.0.0.1:0")
	lns, err := ListenGroup(ln, eng.Loops())
	if err != nil {
		t.Fatal(err)
	}
	x, err := eng.Accept(lns, a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	return x, ln.Addr().String()
}

// hello sends a line through a new relayed pair and checks the echo
// (after the header the acceptor sends, echoed too). The reader is for
// more lines.
func hello(c net.Conn, line string) (*bufio.Reader, error) {
	br := bufio.NewReader(c)
	return br, echo(c, br, "hello\n", line)
}

// echo sends a line and checks that want, then the line, come back.
func echo(c net.Conn, br *bufio.Reader, want, line string) error {
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	for _, want := range []string{want, line + "\n"} {
		if want == "" {
			continue
		}
		got, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if got != want {
			return errors.New("got " + got + ", want " + want)
		}
	}
	return nil
}

// Every loop accepts on its own socket of the group, and relays what it
// accepted; clients from many addresses reach every loop.
func TestAcceptOnLoops(t *testing.T) {
	eng := newLoopEngine(t, 2)
	a := newEchoAcceptor(t, eng, echoBackend(t))
	_, addr := acceptOn(t, eng, a)
	helloFrom(t, addr, 0, 64, 16)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.perLoop) != 2 {
		t.Errorf("clients per loop: %v, want both loops used", a.perLoop)
	}
}

// At Admit's limit a loop stops accepting: the next client waits in the
// backlog, and is accepted once Resume follows a free slot.
func TestAcceptPausesAtAdmit(t *testing.T) {
	eng := newLoopEngine(t, 1)
	a := newEchoAcceptor(t, eng, echoBackend(t))
	a.limit.Store(1)
	x, addr := acceptOn(t, eng, a)
	first := testkit.Dial(t, "127.0.3.1", addr)
	if _, err := hello(first, "first"); err != nil {
		t.Fatal(err)
	}
	second := testkit.Dial(t, "127.0.3.2", addr) // completes in the backlog
	testkit.Await(t, a.refused, "Admit was not asked for the second client")
	if n := len(a.handled); n != 1 {
		t.Fatalf("%d clients handled over the limit", n)
	}
	first.Close() // its Done frees the slot
	testkit.WaitFor(t, "the first pair's slot freed", func() bool { return a.slots.Load() == 0 })
	x.Resume()
	second.SetDeadline(time.Now().Add(testkit.Guard))
	if _, err := hello(second, "second"); err != nil {
		t.Fatalf("second client after Resume: %v", err)
	}
}

// A backlog longer than one accept batch, and than a wake-up's share
// (epAcceptTurn, past which the loop yields), is taken whole with nothing
// else to wake the loop. The listener is level-triggered in the loop's set,
// but the Go netpoller watches that set edge-triggered: a loop that parked
// with connections left in the backlog would not be woken for them.
func TestAcceptBacklogBeyondBatch(t *testing.T) {
	eng := newLoopEngine(t, 1)
	a := newEchoAcceptor(t, eng, echoBackend(t))
	a.silent = true // no pair's bytes wake the loop
	a.limit.Store(1)
	x, addr := acceptOn(t, eng, a)
	testkit.Dial(t, "127.0.3.1", addr)
	testkit.Await(t, a.handled, "the first client was not handled")
	const backlog = epAcceptTurn + epAcceptBatch + 5
	for i := range backlog {
		testkit.Dial(t, "127.0.4."+strconv.Itoa(i+1), addr) // completes in the backlog
	}
	testkit.Await(t, a.refused, "Admit was not asked for the backlog")
	a.limit.Store(0)
	x.Resume()
	testkit.WaitFor(t, "the whole backlog handled", func() bool { return len(a.handled) == backlog })
}

// Close stops every loop's accepting and closes the group; pairs already
// relayed go on.
func TestAcceptClose(t *testing.T) {
	eng := newLoopEngine(t, 2)
	a := newEchoAcceptor(t, eng, echoBackend(t))
	x, addr := acceptOn(t, eng, a)
	c := testkit.Dial(t, "127.0.3.3", addr)
	br, err := hello(c, "before")
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-x.Done():
	default:
		t.Error("Done not closed after Close")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("the group still accepts after Close")
	}
	if err := echo(c, br, "", "after"); err != nil {
		t.Errorf("relayed pair after Close: %v", err)
	}
}

// Accept needs a listener per loop, TCP ones.
func TestAcceptNeedsAListenerPerLoop(t *testing.T) {
	eng := newLoopEngine(t, 2)
	a := newEchoAcceptor(t, eng, "127.0.0.1:1")
	ln := testkit.Listen(t, "127.0.0.1:0")
	if _, err := eng.Accept([]net.Listener{ln}, a); err == nil || !strings.Contains(err.Error(), "1 listeners for 2 loops") {
		t.Errorf("one listener for two loops: %v", err)
	}
	ul, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	if _, err := eng.Accept([]net.Listener{ln, ul}, a); err == nil {
		t.Error("a unix listener was taken")
	}
	if _, err := ListenGroup(ul, 2); err == nil {
		t.Error("ListenGroup took a unix listener")
	}
}

// DialNow connects only where connect(2) completes at once: loopback IP
// literals. Anything else is ErrWouldBlock, before any packet is sent.
func TestDialNow(t *testing.T) {
	eng := newLoopEngine(t, 1)
	for _, addr := range []string{"localhost:80", "192.0.2.1:80", "[2001:db8::1]:80"} {
		if _, err := eng.DialNow("tcp", addr); !errors.Is(err, ErrWouldBlock) {
			t.Errorf("DialNow %s: %v, want ErrWouldBlock", addr, err)
		}
	}
	dir := t.TempDir()
	if _, err := eng.DialNow("unix", dir+"/none"); err == nil || errors.Is(err, ErrWouldBlock) {
		t.Errorf("DialNow to a missing unix socket: %v, want an error", err)
	}
	ul, err := net.Listen("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	uc, err := eng.DialNow("unix", dir+"/s")
	if err != nil {
		t.Fatalf("DialNow to a unix listener: %v", err)
	}
	uc.Close()
	dead := testkit.FreePort(t)
	if _, err := eng.DialNow("tcp", dead); err == nil || errors.Is(err, ErrWouldBlock) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("DialNow to a closed port: %v, want connection refused", err)
	}
	live := testkit.Listen(t, "127.0.0.1:0")
	c, err := eng.DialNow("tcp", live.Addr().String())
	if err != nil {
		t.Fatalf("DialNow to a listener: %v", err)
	}
	if _, ok := c.(*Socket); !ok {
		t.Errorf("DialNow returned a %T", c)
	}
	c.Close()
}

// ListenGroup keeps the listener's family and dual-stack setting: a group
// on [::] takes IPv4 and IPv6 clients on every socket.
func TestListenGroupDualStack(t *testing.T) {
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skip("no IPv6:", err)
	}
	lns, err := ListenGroup(ln, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	got := make(chan string, 256)
	for _, l := range lns {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				got <- c.RemoteAddr().String()
				c.Close()
			}
		}()
	}
	port := ln.Addr().(*net.TCPAddr).Port
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("dial %s: %v", host, err)
		}
		c.Close()
		testkit.Await(t, got, "no socket of the group accepted a client from %s", host)
	}
}

// ListenTCP listens with plain TCP even where the kernel has Multipath TCP
// (package net's default since Go 1.24 is MPTCP), and ListenGroup gives
// every sibling the first socket's protocol: a group is all TCP or all
// MPTCP, never a mix in which an MPTCP client's connection depends on
// the socket the kernel's hash picks.
func TestListenGroupKeepsProtocol(t *testing.T) {
	protocol := func(l net.Listener) int {
		t.Helper()
		rc, err := l.(*net.TCPListener).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var proto int
		var gerr error
		if err := rc.Control(func(fd uintptr) { proto, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		return proto
	}
	group := func(ln net.Listener) []int {
		t.Helper()
		lns, err := ListenGroup(ln, 3)
		if err != nil {
			t.Fatal(err)
		}
		var protos []int
		for _, l := range lns {
			protos = append(protos, protocol(l))
			l.Close()
		}
		return protos
	}
	ln, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if got := group(ln); !slices.Equal(got, []int{unix.IPPROTO_TCP, unix.IPPROTO_TCP, unix.IPPROTO_TCP}) {
		t.Errorf("ListenTCP's group: protocols %v, want TCP (%d) only", got, unix.IPPROTO_TCP)
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	mp, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if protocol(mp) != unix.IPPROTO_MPTCP {
		mp.Close()
		t.Skip("no Multipath TCP in this kernel (net.mptcp.enabled = 0?): the mixed group cannot happen")
	}
	if got := group(mp); !slices.Equal(got, []int{unix.IPPROTO_MPTCP, unix.IPPROTO_MPTCP, unix.IPPROTO_MPTCP}) {
		t.Errorf("an MPTCP listener's group: protocols %v, want MPTCP (%d) only", got, unix.IPPROTO_MPTCP)
	}
}

// Pair.HoldReplies (epoll engine): the backend's bytes wait for the
// client's first bytes to pass the PROXY check. A client refused for a
// header gets none of them; one that speaks gets them at once; a silent
// one gets them when the hold ends.
func TestEpollHoldReplies(t *testing.T) {
	eng := newLoopEngine(t, 1)
	r := newRig(t, eng)
	hold := func(p *Pair) { p.RefuseProxy, p.HoldReplies = true, time.Hour }

	refused := r.pair(hold)
	write(t, refused.backend, "greeting\n") // a backend that speaks first
	write(t, refused.client, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
	refused.client.SetReadDeadline(time.Now().Add(testkit.Guard))
	if got, _ := io.ReadAll(refused.client); len(got) != 0 {
		t.Errorf("a client refused for its header got %q", got)
	}
	if st := refused.wait(t); !errors.Is(st.Err, ErrProxyHeader) || st.BytesOut != 0 {
		t.Errorf("refused: Err %v, BytesOut %d", st.Err, st.BytesOut)
	}

	speaks := r.pair(hold)
	write(t, speaks.backend, "greeting\n")
	write(t, speaks.client, "GET / HTTP/1.1\r\n")
	speaks.client.SetReadDeadline(time.Now().Add(testkit.Guard))
	if got := string(readN(t, speaks.client, 9)); got != "greeting\n" {
		t.Errorf("client that spoke got %q", got)
	}
	if got := string(readN(t, speaks.backend, 16)); got != "GET / HTTP/1.1\r\n" {
		t.Errorf("backend got %q", got)
	}
	speaks.closeClean(t)

	silent := r.pair(func(p *Pair) { p.RefuseProxy, p.HoldReplies = true, 30*time.Millisecond })
	write(t, silent.backend, "greeting\n")
	silent.client.SetReadDeadline(time.Now().Add(testkit.Guard))
	if got := string(readN(t, silent.client, 9)); got != "greeting\n" {
		t.Errorf("silent client got %q after the hold", got)
	}
	silent.closeClean(t)
}

// A client that began a PROXY signature and stalls past the hold is
// refused as if it had sent it: it never sees the backend's bytes.
func TestEpollHoldRefusesAStalledSignature(t *testing.T) {
	eng := newLoopEngine(t, 1)
	r := newRig(t, eng)
	e := r.pair(func(p *Pair) { p.RefuseProxy, p.HoldReplies = true, 30*time.Millisecond })
	write(t, e.backend, "greeting\n")
	write(t, e.client, "PROX")
	e.client.SetReadDeadline(time.Now().Add(testkit.Guard))
	if got, _ := io.ReadAll(e.client); len(got) != 0 {
		t.Errorf("a client stalled mid-signature got %q", got)
	}
	if st := e.wait(t); !errors.Is(st.Err, ErrProxyHeader) {
		t.Errorf("Err %v, want ErrProxyHeader", st.Err)
	}
}

// A unix socket dialed by DialNow is relayed like a TCP one.
func TestDialNowUnixRelays(t *testing.T) {
	eng := newLoopEngine(t, 1)
	ul, err := net.Listen("unix", t.TempDir()+"/echo")
	if err != nil {
		t.Fatal(err)
	}
	var tr testkit.Tracked
	tr.Serve(t, ul, func(c net.Conn) { io.Copy(c, c); c.Close() }, testkit.WaitHandlers())
	front := listen(t)
	client, accepted := dialAccept(t, front)
	defer client.Close()
	b, err := eng.DialNow("unix", ul.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan Stats, 1)
	eng.Start(Pair{Client: accepted, Backend: b.(Conn), Header: []byte("hi\n"), Done: func(s Stats) { done <- s }})
	client.SetDeadline(time.Now().Add(testkit.Guard))
	write(t, client, "there\n")
	if got := string(readN(t, client, 9)); got != "hi\nthere\n" {
		t.Errorf("through the unix backend: %q", got)
	}
	client.CloseWrite()
	expectEOF(t, client)
	if st := testkit.Await(t, done, "Done not called"); st.Err != nil || st.BytesIn != 6 {
		t.Errorf("Stats %+v", st)
	}
}

// Spread(1) moves every listener to the first loop: all new clients are
// accepted there, none is lost on the way; Spread(2) gives the second
// loop its listener back; Close after moves closes everything.
func TestAcceptSpread(t *testing.T) {
	eng := newLoopEngine(t, 2)
	a := newEchoAcceptor(t, eng, echoBackend(t))
	x, addr := acceptOn(t, eng, a)
	clients := func(from int) map[Starter]int {
		a.mu.Lock()
		clear(a.perLoop)
		a.mu.Unlock()
		helloFrom(t, addr, from, 48, 12)
		a.mu.Lock()
		defer a.mu.Unlock()
		return maps.Clone(a.perLoop)
	}
	x.Spread(1)
	if got := clients(0); len(got) != 1 || got[loopStarter{eng.loops[0]}] != 48 {
		t.Errorf("after Spread(1): clients per loop %v, want all 48 on the first", got)
	}
	if n := eng.mayTake(); n != 1 {
		t.Errorf("after Spread(1): %d loops may take shed pairs, want 1", n)
	}
	x.Spread(2)
	if got := clients(100); len(got) != 2 {
		t.Errorf("after Spread(2): clients per loop %v, want both loops used", got)
	}
	if n := eng.mayTake(); n != 2 {
		t.Errorf("after Spread(2): %d loops may take shed pairs, want 2", n)
	}
	x.Spread(1)
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("the group still accepts after Close")
	}
}

// helloFrom has n clients, from client addresses from, from+1, ..., at
// most par at a time, exchange a hello through addr.
func helloFrom(t *testing.T, addr string, from, n, par int) {
	t.Helper()
	testkit.Parallel(t, n, par, func(i int) error {
		c, err := testkit.DialFrom(testkit.ClientIP(from+i), addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(testkit.Guard))
		_, err = hello(c, "client")
		return err
	})
}

// Work counts the connections the loops accepted and the bytes they
// moved, both ways.
func TestEpollWork(t *testing.T) {
	eng := newLoopEngine(t, 2)
	a := newEchoAcceptor(t, eng, echoBackend(t))
	_, addr := acceptOn(t, eng, a)
	const clients, size = 20, 64 << 10
	payload := strings.Repeat("x", size-1)
	for i := range clients {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second)) // hang guard
		if _, err := hello(c, payload); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		c.Close()
	}
	// Each loop adds its counts when it parks: wait for the last ones.
	deadline := time.Now().Add(10 * time.Second)
	for {
		bytes, conns := eng.Work()
		if conns == clients && bytes >= 2*clients*size {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Work = %d bytes, %d connections; want %d connections and at least %d bytes", bytes, conns, clients, 2*clients*size)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stuckAcceptor holds the loop that accepted a client in Handle until
// release is closed.
type stuckAcceptor struct {
	*echoAcceptor
	held    chan struct{}
	release chan struct{}
}

func (a *stuckAcceptor) Handle(s *Socket, on Starter) {
	a.held <- struct{}{}
	<-a.release
	s.Close()
	a.Unadmit()
}

// Ping answers while the loops run, names a loop stuck in a callback, and
// answers again once it is free.
func TestPingFindsAStuckLoop(t *testing.T) {
	eng := newLoopEngine(t, 2)
	if err := eng.Ping(testContext(t, testkit.Guard)); err != nil {
		t.Fatalf("idle loops: %v", err)
	}
	a := &stuckAcceptor{echoAcceptor: newEchoAcceptor(t, eng, echoBackend(t)), held: make(chan struct{}, 1), release: make(chan struct{})}
	_, addr := acceptOn(t, eng, a)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testkit.Await(t, a.held, "the client was not handled")
	err = eng.Ping(testContext(t, 200*time.Millisecond))
	if !errors.Is(err, ErrLoopStuck) || !strings.Contains(err.Error(), "of 2") {
		t.Errorf("a loop held in Handle: Ping = %v, want ErrLoopStuck naming one loop of 2", err)
	}
	close(a.release)
	if err := eng.Ping(testContext(t, testkit.Guard)); err != nil {
		t.Errorf("after the loop was released: %v", err)
	}
}

// testContext is a context that ends after d or with the test.
func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
