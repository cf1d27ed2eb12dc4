// Package testkit holds the helpers that stickyd's tests share: hang
// guards, polling waits, free loopback ports, loopback clients and
// listeners, and a PROXY-aware greeting/echo backend with its greeting
// reader. It imports nothing of stickyd (but internal/linuxonly), so that
// any package's tests, in the package or outside it, can use it.
//
// testkit.go has the waits (Guard, WaitFor, Await, Parallel), net.go the
// loopback sockets (ports, listeners, clients, readers), backend.go the
// servers (Tracked, Backend), buffer.go SyncBuffer.
//
//	b := testkit.StartBackend(t, "b1")         // "<name> <client>\n", then echo
//	c := testkit.Dial(t, "127.0.0.2", proxyAddr) // closed at cleanup
//	name, client, br := testkit.Greeting(t, c)
//	testkit.WaitFor(t, "one header", func() bool { return len(b.Headers()) == 1 })
package testkit

import (
	"sync"
	"testing"
	"time"

	_ "github.com/stickyd/stickyd/internal/linuxonly" // stickyd is Linux-only
)

// Guard bounds every wait of a test: a hang fails the test after Guard
// instead of blocking it until the go test timeout. It is generous, for
// loaded machines.
const Guard = 20 * time.Second

// waitOptions are WaitFor's settings.
type waitOptions struct {
	every, within time.Duration
}

// WaitOption changes how WaitFor polls.
type WaitOption func(*waitOptions)

// Every sets WaitFor's polling interval (default 5 ms).
func Every(d time.Duration) WaitOption { return func(o *waitOptions) { o.every = d } }

// Within sets how long WaitFor waits before it fails the test (default Guard).
func Within(d time.Duration) WaitOption { return func(o *waitOptions) { o.within = d } }

// WaitFor polls cond until it holds, or fails t with "timed out waiting
// for <what>" once the guard has passed.
func WaitFor(t testing.TB, what string, cond func() bool, opts ...WaitOption) {
	t.Helper()
	o := waitOptions{every: 5 * time.Millisecond, within: Guard}
	for _, opt := range opts {
		opt(&o)
	}
	deadline := time.Now().Add(o.within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(o.every)
	}
}

// Await returns the next value received from ch, or fails t with the
// message (format and args, as for t.Fatalf) when none comes within Guard.
func Await[T any](t testing.TB, ch <-chan T, format string, args ...any) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Guard):
		t.Fatalf(format, args...)
		panic("unreachable")
	}
}

// Parallel runs f(0) .. f(n-1) on goroutines of their own, at most limit
// at a time (0: all at once), waits for them all, and reports each error
// they return with t.Error. f must not call t.Fatal.
func Parallel(t testing.TB, n, limit int, f func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	if limit <= 0 {
		limit = max(n, 1)
	}
	sem := make(chan struct{}, limit)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := f(i); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
