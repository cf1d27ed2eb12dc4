package integration_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

func fourBackends(t *testing.T) ([]*testkit.Backend, []string) {
	t.Helper()
	var bs []*testkit.Backend
	var args []string
	for i := range 4 {
		b := testkit.StartBackend(t, fmt.Sprintf("b%d", i))
		bs = append(bs, b)
		args = append(args, "--backend", b.Flag())
	}
	return bs, args
}

// Every one of 1000 client IPs, three connections each, lands on one
// backend, which sees the true client IP; each of the four backends gets
// within 15% of the average. (1000 keys over 4 bins is binomial noise of
// +-2.7% per standard deviation: this bound is 5.5 sigma, and the hash has
// no seed, so the result is the same on every run.)
func TestStickinessThousandClients(t *testing.T) {
	_, args := fourBackends(t)
	p := startStickyd(t, append(args, "--send-proxy", "v2")...)
	const clients = 1000
	perBackend := checkStickyThrough(t, clients, 3, 4, func(ip string, _ int) (string, error) {
		name, addr, err := hello(ip, p.addr)
		if err == nil && addr.Addr().String() != ip {
			err = fmt.Errorf("client %s: backend saw %s", ip, addr)
		}
		return name, err
	})
	mean := float64(clients) / 4
	for name, n := range perBackend {
		if dev := float64(n)/mean - 1; dev > 0.15 || dev < -0.15 {
			t.Errorf("backend %s has %d clients, %+.1f%% from the average %.0f", name, n, 100*dev, mean)
		}
	}
	t.Logf("clients per backend: %v", perBackend)
}

// hello connects from ip and returns the backend's greeting.
func hello(ip, addr string) (string, netip.AddrPort, error) {
	c, err := testkit.DialFrom(ip, addr)
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	defer c.Close()
	buf := make([]byte, 0, 128)
	for !bytes.HasSuffix(buf, []byte("\n")) {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return "", netip.AddrPort{}, fmt.Errorf("client %s: read greeting: %w (got %q)", ip, err, buf)
		}
	}
	name, a, _ := strings.Cut(strings.TrimSpace(string(buf)), " ")
	ap, err := netip.ParseAddrPort(a)
	return name, ap, err
}

// The backend is told the exact client address and port, in v1 and v2, and
// the address the client connected to.
func TestSendProxyVersions(t *testing.T) {
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			b := testkit.StartBackend(t, "only")
			p := startStickyd(t, "--backend", b.Flag(), "--send-proxy", v)
			c := testkit.Dial(t, "127.3.4.5", p.addr)
			defer c.Close()
			_, got, _ := testkit.Greeting(t, c)
			if got.String() != c.LocalAddr().String() {
				t.Errorf("backend saw %s, client is %s", got, c.LocalAddr())
			}
			h := b.Headers()[0]
			if want := byte(v[1] - '0'); h.Version != want {
				t.Errorf("header version %d, want %d", h.Version, want)
			}
			if h.DestinationAddr.String() != p.addr {
				t.Errorf("destination %s, want %s", h.DestinationAddr, p.addr)
			}
		})
	}
}

// --send-proxy none sends the client's bytes only.
func TestSendProxyNone(t *testing.T) {
	ln := testkit.Listen(t, "127.0.0.1:0")
	defer ln.Close()
	p := startStickyd(t, "--backend", ln.Addr().String(), "--send-proxy", "none")
	c := testkit.Dial(t, "127.0.0.1", p.addr)
	c.Write([]byte("hello"))
	c.CloseWrite()
	bc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	got, _ := io.ReadAll(bc)
	if string(got) != "hello" {
		t.Errorf("backend got %q, want exactly the client's bytes", got)
	}
}

// Clients get plain TCP, as from HAProxy and nginx, on every event loop's
// listener: a client that asks for Multipath TCP (Linux with mptcpize,
// Apple's devices) falls back to TCP. Package net listens with MPTCP by
// default since Go 1.24 where the kernel has it, while the loops' other
// SO_REUSEPORT sockets were plain TCP: whether a client's connection was
// MPTCP depended on the socket the kernel's hash gave it to.
func TestClientsGetPlainTCP(t *testing.T) {
	d := net.Dialer{Timeout: testkit.Guard}
	d.SetMultipathTCP(true)
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	probe, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	mp, _ := probe.(*net.TCPConn).MultipathTCP()
	probe.Close()
	ln.Close()
	if !mp {
		t.Skip("no Multipath TCP between two MPTCP sockets here (net.mptcp.enabled = 0?)")
	}
	echo := serveEcho(t)
	p := startStickyd(t, "--backend", "echo="+echo.Addr(), "--send-proxy", "none")
	// Distinct client addresses: the kernel's hash spreads them over the
	// loops' listeners.
	for i := range 32 {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(testkit.ClientIP(i))}
		c, err := d.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(testkit.Guard))
		if mp, err := c.(*net.TCPConn).MultipathTCP(); err != nil || mp {
			t.Errorf("client %d: MultipathTCP() = %v, %v: want plain TCP", i, mp, err)
		}
		msg := fmt.Sprintf("client %d", i)
		c.Write([]byte(msg))
		c.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(c); err != nil || string(got) != msg {
			t.Errorf("client %d: echoed %q, %v; want %q", i, got, err, msg)
		}
		c.Close()
	}
}

// A trusted upstream's v1 and v2 headers (IPv4 and IPv6 sources) reach the
// backend unchanged; the address in the header picks the backend.
func TestTrustedUpstreamHeaders(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag(), "--accept-proxy", "127.0.0.0/8")
	cases := []struct{ src, dst string }{
		{"203.0.113.7:40001", "198.51.100.1:443"},
		{"[2001:db8::42]:40002", "[2001:db8::1]:443"},
	}
	for _, tc := range cases {
		for _, version := range []byte{1, 2} {
			src, dst := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.dst))
			c := testkit.Dial(t, "127.0.0.1", p.addr)
			if _, err := pp.HeaderProxyFromAddrs(version, src, dst).WriteTo(c); err != nil {
				t.Fatal(err)
			}
			_, got, br := testkit.Greeting(t, c)
			if got.String() != src.String() {
				t.Errorf("v%d %s: backend saw %s", version, tc.src, got)
			}
			c.Write([]byte("ping\n"))
			if line, _ := br.ReadString('\n'); line != "ping\n" {
				t.Errorf("echo after header: %q", line)
			}
			c.Close()
		}
	}
	for _, h := range b.Headers() {
		if h.DestinationAddr.String() != "198.51.100.1:443" && h.DestinationAddr.String() != "[2001:db8::1]:443" {
			t.Errorf("destination %s not carried through", h.DestinationAddr)
		}
	}
}

// Bytes the upstream sends in the same segment as its header are not lost.
func TestTrustedHeaderWithPayload(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag(), "--accept-proxy", "127.0.0.1")
	c := testkit.Dial(t, "127.0.0.1", p.addr)
	defer c.Close()
	c.Write([]byte("PROXY TCP4 192.0.2.9 192.0.2.1 5000 80\r\nfirst-bytes\n"))
	_, got, br := testkit.Greeting(t, c)
	if got.String() != "192.0.2.9:5000" {
		t.Errorf("backend saw %s", got)
	}
	if line, _ := br.ReadString('\n'); line != "first-bytes\n" {
		t.Errorf("payload after header: %q", line)
	}
}

// A PROXY header from a peer outside --accept-proxy is refused: the
// connection is closed and no backend sees it.
func TestUntrustedHeaderRefused(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag(), "--accept-proxy", "127.0.0.1/32")
	for _, hdr := range []string{"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v2"} {
		c := testkit.Dial(t, "127.9.9.9", p.addr)
		if hdr == "v2" {
			pp.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(1, 2, 3, 4), Port: 1}, &net.TCPAddr{IP: net.IPv4(5, 6, 7, 8), Port: 2}).WriteTo(c)
		} else {
			c.Write([]byte(hdr))
		}
		got, err := io.ReadAll(c)
		if len(got) != 0 && !bytes.Contains(got, []byte("127.9.9.9")) {
			t.Errorf("untrusted header: client got %q", got)
		}
		if len(got) > 0 {
			t.Errorf("untrusted header was relayed: %q", got)
		}
		_ = err
		c.Close()
	}
	for _, h := range b.Headers() {
		if ip, _, _ := h.IPs(); ip.String() == "1.2.3.4" {
			t.Errorf("backend was told the spoofed address")
		}
	}
	testkit.WaitFor(t, "a log line for each untrusted header", func() bool {
		return strings.Count(p.stderr.String(), "PROXY header from untrusted peer") == 2
	})
}

// A server-speaks-first client that sends nothing is still served.
func TestSilentClientServed(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag())
	c := testkit.Dial(t, "127.0.0.7", p.addr)
	defer c.Close()
	if _, got, _ := testkit.Greeting(t, c); got.Addr().String() != "127.0.0.7" {
		t.Errorf("backend saw %s", got)
	}
}

// v2 LOCAL and v1 UNKNOWN (health checks) mean "use the socket address".
func TestLocalHeaderUsesSocket(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag(), "--accept-proxy", "127.0.0.0/8")
	for _, hdr := range [][]byte{
		append(append([]byte{}, pp.SIGV2...), 0x20, 0x00, 0x00, 0x00), // v2 LOCAL, no addresses
		[]byte("PROXY UNKNOWN\r\n"),
	} {
		c := testkit.Dial(t, "127.0.0.8", p.addr)
		c.Write(hdr)
		if _, got, _ := testkit.Greeting(t, c); got.Addr().String() != "127.0.0.8" {
			t.Errorf("LOCAL %q: backend saw %s", hdr[:5], got)
		}
		c.Close()
	}
}

// Half-close: each side's end of writes reaches the other while the
// reverse direction keeps flowing.
func TestHalfClose(t *testing.T) {
	t.Run("client-first", func(t *testing.T) {
		b := testkit.StartBackend(t, "only")
		p := startStickyd(t, "--backend", b.Flag())
		c := testkit.Dial(t, "127.0.0.1", p.addr)
		defer c.Close()
		_, _, br := testkit.Greeting(t, c)
		c.Write([]byte("last words\n"))
		c.CloseWrite() // backend echoes, then sees EOF, then closes its side
		rest, err := io.ReadAll(br)
		if err != nil || string(rest) != "last words\n" {
			t.Errorf("after client half-close got %q, %v", rest, err)
		}
	})
	t.Run("backend-first", func(t *testing.T) {
		ln := testkit.Listen(t, "127.0.0.1:0")
		defer ln.Close()
		p := startStickyd(t, "--backend", ln.Addr().String(), "--send-proxy", "none")
		c := testkit.Dial(t, "127.0.0.1", p.addr)
		defer c.Close()
		bc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer bc.Close()
		bc.Write([]byte("bye"))
		bc.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c) // client sees the backend's EOF...
		if string(got) != "bye" || err != nil {
			t.Fatalf("client got %q, %v", got, err)
		}
		c.Write([]byte("still talking")) // ...and can still send
		c.CloseWrite()
		got, _ = io.ReadAll(bc)
		if string(got) != "still talking" {
			t.Errorf("backend got %q after its own half-close", got)
		}
	})
}

// 100 MB each way at once, checksummed.
func TestStream100MB(t *testing.T) {
	ln := testkit.Listen(t, "127.0.0.1:0")
	defer ln.Close()
	p := startStickyd(t, "--backend", ln.Addr().String(), "--send-proxy", "none")
	const size = 100 << 20
	c := testkit.Dial(t, "127.0.0.1", p.addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	bc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	bc.SetDeadline(time.Now().Add(2 * time.Minute))
	type sums struct{ sent, got [32]byte }
	run := func(w, r net.Conn, seed uint64, out chan<- sums) {
		var s sums
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := sha256.New()
			io.Copy(h, r)
			copy(s.got[:], h.Sum(nil))
		}()
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), size), h)
		io.Copy(w, src)
		w.(*net.TCPConn).CloseWrite()
		copy(s.sent[:], h.Sum(nil))
		wg.Wait()
		out <- s
	}
	fromClient, fromBackend := make(chan sums, 1), make(chan sums, 1)
	go run(c, c, 1, fromClient)
	go run(bc, bc, 2, fromBackend)
	cs, bs := <-fromClient, <-fromBackend
	if cs.sent != bs.got {
		t.Error("client->backend stream corrupted")
	}
	if bs.sent != cs.got {
		t.Error("backend->client stream corrupted")
	}
}

// A backend that stops mid-run: its clients move to their next choice,
// everybody else stays; when it returns, its clients come back.
func TestBackendDownMovesOnlyItsClients(t *testing.T) {
	bs, args := fourBackends(t)
	p := startStickyd(t, args...)
	const clients = 200
	before := make([]string, clients)
	helloAll(t, p.addr, before)
	bs[1].Close()
	after := make([]string, clients)
	helloAll(t, p.addr, after)
	moved := 0
	for i := range clients {
		switch {
		case before[i] == "b1" && after[i] == "b1":
			t.Errorf("client %d still on the dead backend", i)
		case before[i] != "b1" && after[i] != before[i]:
			t.Errorf("client %d moved from %s to %s though its backend is up", i, before[i], after[i])
		case before[i] == "b1":
			moved++
		}
	}
	if moved == 0 {
		t.Error("no client was on b1: the test proves nothing")
	}
}

// helloAll connects once from each of len(names) client IPs, in parallel,
// and records which backend answered.
func helloAll(t *testing.T, addr string, names []string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name, _, err := hello(testkit.ClientIP(i), addr)
			if err != nil {
				errs <- fmt.Errorf("client %d refused: %w", i, err)
			}
			names[i] = name
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// A client that never finishes its PROXY header is closed at the header
// timeout, and stickyd's descriptors return to where they were.
func TestHeaderTimeoutNoLeak(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag(), "--accept-proxy", "127.0.0.0/8", "--proxy-header-timeout", "300ms")
	// Warm up: one timed-out handshake first, so that anything the process
	// opens lazily on its first connection is in the baseline.
	warm := testkit.Dial(t, testkit.ClientIP(999), p.addr)
	warm.Write([]byte("PROXY TCP4"))
	warm.Read(make([]byte, 1))
	warm.Close()
	base := p.fdCount(t)
	var conns []*net.TCPConn
	for i := range 50 {
		c := testkit.Dial(t, testkit.ClientIP(i), p.addr)
		c.Write([]byte("PROXY TCP4 1.2.3.4")) // and never the rest
		conns = append(conns, c)
	}
	for _, c := range conns {
		start := time.Now()
		n, err := c.Read(make([]byte, 1))
		if n != 0 || err == nil {
			t.Fatalf("half header: read %d, %v", n, err)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("not closed near the header timeout")
		}
		c.Close()
	}
	deadline := time.Now().Add(testkit.Guard)
	for p.fdCount(t) > base {
		if time.Now().After(deadline) {
			t.Fatalf("descriptors: %d, baseline %d: %v", p.fdCount(t), base, p.fdTargets(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(b.Headers()) != 0 {
		t.Errorf("backend saw %d connections", len(b.Headers()))
	}
}

// SIGTERM: new connections are refused at once, an open one keeps working
// until it ends, then stickyd exits 0.
func TestDrainOnSIGTERM(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag(), "--drain-timeout", "30s")
	c := testkit.Dial(t, "127.0.0.1", p.addr)
	_, _, br := testkit.Greeting(t, c)
	p.cmd.Process.Signal(syscall.SIGTERM)
	testkit.WaitFor(t, "listener closed", func() bool {
		nc, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	for i := range 3 {
		fmt.Fprintf(c, "msg %d\n", i)
		if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("msg %d\n", i) {
			t.Fatalf("long-lived connection broken during drain: %q %v", line, err)
		}
	}
	select {
	case <-p.exited:
		t.Fatal("exited while a connection was open")
	default:
	}
	c.Close()
	testkit.Await(t, p.exited, "did not exit after the last connection closed")
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after drain, want 0", code)
	}
}

// The drain timeout ends connections that do not finish.
func TestDrainTimeout(t *testing.T) {
	b := testkit.StartBackend(t, "only")
	p := startStickyd(t, "--backend", b.Flag(), "--drain-timeout", "300ms")
	c := testkit.Dial(t, "127.0.0.1", p.addr)
	defer c.Close()
	testkit.Greeting(t, c)
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after the drain timeout")
	}
}
