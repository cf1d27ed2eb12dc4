package testkit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
)

// Listen listens on addr (a loopback address; port 0 for a free one). The
// listener is closed when the test ends.
func Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// RefusedAddr returns an address on ip (a loopback address) whose dials
// are refused for as long as the test runs: a TCP socket bound there and
// never listening, held until the test ends, so that no other socket (a
// test package running beside this one) can listen on the port meanwhile,
// as it could on a port merely closed.
func RefusedAddr(t testing.TB, ip string) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	sa := &syscall.SockaddrInet4{}
	copy(sa.Addr[:], netip.MustParseAddr(ip).AsSlice())
	if err := syscall.Bind(fd, sa); err != nil {
		t.Fatal(err)
	}
	got, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(ip, strconv.Itoa(got.(*syscall.SockaddrInet4).Port))
}

// FreePort reserves a port on 127.0.0.1, releases it and returns the
// address: a port where nothing listens (a refused dial), or one to hand
// to a program that listens on it. The port is drawn from [FreePortLo,
// FreePortHi), below the kernel's ephemeral range: an ephemeral port
// released here could be taken at once as the source port of any client
// socket on the machine (the tests make tens of thousands), and the
// program would then fail to bind it.
func FreePort(t testing.TB) string {
	t.Helper()
	return "127.0.0.1:" + strconv.Itoa(FreePortBase(t, 1, FreePortLo, FreePortHi))
}

// FreePort's range: apart from the ranges the packages' tests give
// FreePortBase for worker ports (10000-30000), and below the ephemeral
// range (32768 and up by default).
const FreePortLo, FreePortHi = 30000, 32768

// FreePortBase returns a base port such that base..base+n-1 are free on
// 127.0.0.1, drawn at random from [lo, hi). Take the range below the
// ephemeral one, so that no client socket can take the ports, and apart
// from the ranges of packages whose tests run at the same time.
//
// No port is handed out twice in one test process: a port released here
// is free again until its program binds it, so two calls in a row (a
// listen and an admin address) could otherwise get the same one, and the
// second bind fail.
func FreePortBase(t testing.TB, n, lo, hi int) int {
	t.Helper()
	handed.Lock()
	defer handed.Unlock()
	for range 100 {
		base := lo + rand.IntN(hi-lo-n)
		if handed.any(base, n) {
			continue
		}
		var lns []net.Listener
		for i := range n {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+i))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		for _, ln := range lns {
			ln.Close()
		}
		if len(lns) == n {
			for i := range n {
				handed.ports[base+i] = true
			}
			return base
		}
	}
	t.Fatalf("no %d free ports in a row in %d-%d", n, lo, hi)
	return 0
}

// handed are the ports FreePortBase has returned in this process.
var handed = portSet{ports: map[int]bool{}}

type portSet struct {
	sync.Mutex
	ports map[int]bool
}

// any reports whether a port of base..base+n-1 is in s.
func (s *portSet) any(base, n int) bool {
	for i := range n {
		if s.ports[base+i] {
			return true
		}
	}
	return false
}

// ClientIP returns the i-th of many distinct loopback client addresses
// (127.10.0.1, 127.10.0.2, ...), for Dial's src.
func ClientIP(i int) string {
	return fmt.Sprintf("127.%d.%d.%d", 10+i/250/256%200, i/250%256, 1+i%250)
}

// ClientIPs returns the first n ClientIP addresses.
func ClientIPs(n int) []string {
	ips := make([]string, n)
	for i := range ips {
		ips[i] = ClientIP(i)
	}
	return ips
}

// Dial connects to addr from the loopback address src ("" for any), with
// Guard as the dial timeout and the connection's deadline. The connection
// is closed when the test ends.
func Dial(t testing.TB, src, addr string) *net.TCPConn {
	t.Helper()
	c, err := DialFrom(src, addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// DialFrom is Dial for goroutines other than the test's: it returns the
// error, and the caller closes the connection.
func DialFrom(src, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: Guard}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(Guard))
	return c, nil
}

// DialHeader connects to addr (network "tcp" or "unix") with Guard as the
// dial timeout and deadline, and writes h first unless h is nil. The
// connection is closed when the test ends.
func DialHeader(t testing.TB, network, addr string, h *pp.Header) net.Conn {
	t.Helper()
	c, err := net.DialTimeout(network, addr, Guard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(Guard))
	if h != nil {
		if _, err := h.WriteTo(c); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Greeting reads a Backend's first line: its name and the client address
// the PROXY header told it. br holds what follows (the echo).
func Greeting(t testing.TB, c net.Conn) (backend string, client netip.AddrPort, br *bufio.Reader) {
	t.Helper()
	br = bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting: %v (got %q)", err, line)
	}
	name, addr, _ := strings.Cut(strings.TrimSpace(line), " ")
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatalf("greeting %q: %v", line, err)
	}
	return name, ap, br
}

// ReadAll reads c until EOF or an error, and fails t if that takes longer
// than Guard (the peer never closed).
func ReadAll(t testing.TB, c net.Conn) (string, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(Guard))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection not closed within %v (got %q)", Guard, b)
	}
	return string(b), err
}

// BlackHole returns the address of a loopback listener with a backlog of
// one that never accepts; one connection fills the queue, so later SYNs
// are dropped and a dial there waits for its timeout. Both are closed when
// the test ends.
func BlackHole(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	filler, err := net.DialTimeout("tcp", addr, Guard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("the black hole accepted a second connection")
	}
	return addr
}

// HTTPDo sends req with client and returns the response's status and body;
// a failed request or body read fails t.
func HTTPDo(t testing.TB, client *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return resp.StatusCode, string(body)
}
