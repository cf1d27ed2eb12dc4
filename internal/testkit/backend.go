package testkit

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
)

// Tracked is a loopback listener that keeps the connections it accepted,
// so that closing it (at the latest when the test ends) closes them too.
type Tracked struct {
	ln    net.Listener
	wait  bool           // Close waits for the handlers
	wg    sync.WaitGroup // the accept loop and, with wait, the handlers
	mu    sync.Mutex
	conns map[net.Conn]struct{} // guarded by mu
}

// ServeOption changes how Serve and StartBackend serve.
type ServeOption func(*serveOptions)

type serveOptions struct {
	waitHandlers  bool
	connTimeout   time.Duration
	headerTimeout time.Duration
}

// WaitHandlers makes Close (and the test's cleanup) wait until every
// connection handler has returned: for tests that check for leaked
// goroutines.
func WaitHandlers() ServeOption { return func(o *serveOptions) { o.waitHandlers = true } }

// ConnTimeout puts one deadline on a Backend's whole connection (header,
// greeting and echo), instead of the default 10 s bound on the header alone.
func ConnTimeout(d time.Duration) ServeOption { return func(o *serveOptions) { o.connTimeout = d } }

func newServeOptions(opts []ServeOption) serveOptions {
	o := serveOptions{headerTimeout: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Serve accepts on ln until the test ends and serves each connection with
// handle on a goroutine of its own. The handler owns the connection but
// must call Forget(c) once it has closed it.
func (tr *Tracked) Serve(t testing.TB, ln net.Listener, handle func(net.Conn), opts ...ServeOption) {
	tr.ln, tr.conns, tr.wait = ln, make(map[net.Conn]struct{}), newServeOptions(opts).waitHandlers
	tr.wg.Add(1)
	go tr.accept(handle)
	t.Cleanup(tr.Close)
}

// Addr returns the listener's address.
func (tr *Tracked) Addr() string { return tr.ln.Addr().String() }

// Close closes the listener and every connection still open (and, with
// WaitHandlers, waits for their handlers).
func (tr *Tracked) Close() {
	tr.ln.Close()
	tr.mu.Lock()
	for c := range tr.conns {
		c.Close()
	}
	tr.mu.Unlock()
	tr.wg.Wait()
}

// Forget drops c, which its handler has closed, from the open connections.
func (tr *Tracked) Forget(c net.Conn) {
	tr.mu.Lock()
	delete(tr.conns, c)
	tr.mu.Unlock()
}

// Lock and Unlock guard the state of a type that embeds Tracked.
func (tr *Tracked) Lock()   { tr.mu.Lock() }
func (tr *Tracked) Unlock() { tr.mu.Unlock() }

func (tr *Tracked) accept(handle func(net.Conn)) {
	defer tr.wg.Done()
	for {
		c, err := tr.ln.Accept()
		if err != nil {
			return
		}
		tr.mu.Lock()
		tr.conns[c] = struct{}{}
		tr.mu.Unlock()
		if !tr.wait {
			go handle(c)
			continue
		}
		tr.wg.Add(1)
		go func() { defer tr.wg.Done(); handle(c) }()
	}
}

// Backend is a PROXY-aware greeting/echo server: it reads the PROXY header
// of each connection (and records it), answers "<name> <client addr>\n",
// then echoes everything until EOF and half-closes. A connection without a
// valid header gets "<name> no-proxy-header <error>\n" and is closed.
type Backend struct {
	Tracked
	Name string
	opts serveOptions
	seen []*pp.Header // guarded by Lock
}

// StartBackend serves a Backend called name on a free loopback port until
// the test ends.
func StartBackend(t testing.TB, name string, opts ...ServeOption) *Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ServeBackend(t, name, ln, opts...)
}

// ServeBackend serves a Backend called name on ln until the test ends.
func ServeBackend(t testing.TB, name string, ln net.Listener, opts ...ServeOption) *Backend {
	b := &Backend{Name: name, opts: newServeOptions(opts)}
	b.Serve(t, ln, b.handle, opts...)
	return b
}

// Flag returns the backend as a --backend value: name=address.
func (b *Backend) Flag() string { return b.Name + "=" + b.Addr() }

// Headers returns the PROXY headers received so far.
func (b *Backend) Headers() []*pp.Header {
	b.Lock()
	defer b.Unlock()
	return append([]*pp.Header(nil), b.seen...)
}

func (b *Backend) handle(c net.Conn) {
	defer func() {
		c.Close()
		b.Forget(c)
	}()
	if b.opts.connTimeout > 0 {
		c.SetDeadline(time.Now().Add(b.opts.connTimeout))
	} else {
		c.SetReadDeadline(time.Now().Add(b.opts.headerTimeout))
	}
	br := bufio.NewReader(c)
	h, err := pp.Read(br)
	if err != nil {
		fmt.Fprintf(c, "%s no-proxy-header %v\n", b.Name, err)
		return
	}
	if b.opts.connTimeout == 0 {
		c.SetReadDeadline(time.Time{})
	}
	b.Lock()
	b.seen = append(b.seen, h)
	b.Unlock()
	fmt.Fprintf(c, "%s %s\n", b.Name, h.SourceAddr)
	io.Copy(c, br) // echo; half-closes below
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
