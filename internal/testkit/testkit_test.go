package testkit_test

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

// A Backend greets with its name and the PROXY header's client address,
// echoes, records the header, and answers a connection without a header
// with no-proxy-header.
func TestBackendGreetsAndEchoes(t *testing.T) {
	b := testkit.StartBackend(t, "b1", testkit.WaitHandlers())
	c := testkit.Dial(t, "127.0.0.2", b.Addr())
	h := pp.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 4000}, c.RemoteAddr())
	if _, err := h.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	name, client, br := testkit.Greeting(t, c)
	if name != "b1" || client.String() != "203.0.113.7:4000" {
		t.Fatalf("greeting = %s %s, want b1 203.0.113.7:4000", name, client)
	}
	c.Write([]byte("ping"))
	c.CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || string(rest) != "ping" {
		t.Fatalf("echo = %q, %v", rest, err)
	}
	testkit.WaitFor(t, "one header", func() bool { return len(b.Headers()) == 1 })

	bare := testkit.Dial(t, "", b.Addr())
	bare.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	if got, _ := testkit.ReadAll(t, bare); got[:len("b1 no-proxy-header")] != "b1 no-proxy-header" {
		t.Errorf("reply without a header = %q", got)
	}
}

// WaitFor fails the test when the condition never holds, after Within.
func TestWaitForTimesOut(t *testing.T) {
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testkit.WaitFor(ft, "never", func() bool { return false }, testkit.Within(20*time.Millisecond))
	}()
	testkit.Await(t, done, "WaitFor did not give up")
	if ft.msg != "timed out waiting for never" {
		t.Errorf("failure = %q", ft.msg)
	}
}

// fakeT records Fatalf and ends the goroutine, as testing.T does.
type fakeT struct {
	testing.TB
	msg  string
	mu   sync.Mutex
	errs []string
}

func (f *fakeT) Error(args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, fmt.Sprint(args...))
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// FreePortBase's ports are free, and a FreePort refuses connections.
func TestFreePorts(t *testing.T) {
	base := testkit.FreePortBase(t, 3, 30000, 32000)
	for i := range 3 {
		testkit.Listen(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(base+i)))
	}
	if c, err := net.DialTimeout("tcp", testkit.FreePort(t), testkit.Guard); err == nil {
		c.Close()
		t.Error("a dial to FreePort was accepted")
	}
}

// Parallel runs every index at most limit at a time and reports each
// error; Await returns what the channel sends.
func TestParallelAndAwait(t *testing.T) {
	var running, most atomic.Int64
	ft := &fakeT{TB: t}
	testkit.Parallel(ft, 20, 3, func(i int) error {
		n := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(2 * time.Millisecond)
		if i%5 == 0 {
			return fmt.Errorf("client %d", i)
		}
		return nil
	})
	if most.Load() > 3 {
		t.Errorf("%d ran at once, limit 3", most.Load())
	}
	if len(ft.errs) != 4 {
		t.Errorf("errors reported: %q, want 4", ft.errs)
	}
	ch := make(chan int, 1)
	ch <- 7
	if got := testkit.Await(t, ch, "no value"); got != 7 {
		t.Errorf("Await = %d, want 7", got)
	}
}
