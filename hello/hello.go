// Package hello is stickyd's built-in demo worker, run by
// `stickyd hello-worker` (typically as the command of a [workers] table).
// It shows which worker a client was sent to and which client address the
// proxy reported:
//
//	$ curl http://127.0.0.1:3000/
//	worker 2 (pid 4242) says hello to 203.0.113.7
//
// Serve listens where the supervisor tells it to ($PORT on 127.0.0.1, or
// the unix socket $SOCKET) and speaks HTTP/1.1 behind a mandatory PROXY
// v1/v2 header:
//
//	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
//	defer stop()
//	err := hello.Serve(ctx, log)
//
// Security posture: the listener only accepts loopback and unix-socket
// peers, and each of them must open with a PROXY header (policy REQUIRE);
// connections from anywhere else are closed before a byte is read.
package hello

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	pp "github.com/pires/go-proxyproto"
	"go.uber.org/zap"
)

// ErrNoAddress is returned by Serve when neither $PORT nor $SOCKET is set.
var ErrNoAddress = errors.New("hello: neither PORT nor SOCKET is set")

const (
	headerTimeout   = 5 * time.Second  // PROXY header read
	readHeaderLimit = 10 * time.Second // HTTP request header read
	idleTimeout     = 2 * time.Minute  // keep-alive between requests
	shutdownGrace   = 5 * time.Second  // drain on ctx cancel
)

// Main is `stickyd hello-worker`: Serve with a production logger until
// SIGTERM or SIGINT.
func Main() error {
	log, err := zap.NewProduction()
	if err != nil {
		return err
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return Serve(ctx, log.Named("hello"))
}

// Serve runs the demo worker until ctx is cancelled, then shuts down
// gracefully (in-flight requests get a few seconds) and returns nil. It
// listens on the unix socket $SOCKET if set (replacing a stale socket file),
// else on 127.0.0.1:$PORT, and names itself $STICKYD_WORKER_ID. log is used
// as given (stickyd names it "hello"). Serve owns and closes its listener.
func Serve(ctx context.Context, log *zap.Logger) error {
	ln, err := listen()
	if err != nil {
		return err
	}
	log.Info("listening", zap.String("address", ln.Addr().String()),
		zap.String("worker", os.Getenv("STICKYD_WORKER_ID")))
	return serve(ctx, ln, os.Getenv("STICKYD_WORKER_ID"), log)
}

func listen() (net.Listener, error) {
	if path := os.Getenv("SOCKET"); path != "" {
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			_ = os.Remove(path) // left by a dead worker
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("hello: listen on SOCKET: %w", err)
		}
		return ln, nil
	}
	port := os.Getenv("PORT")
	if port == "" {
		return nil, ErrNoAddress
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		return nil, fmt.Errorf("hello: listen on PORT: %w", err)
	}
	return ln, nil
}

// serve answers on ln (closing it) until ctx is cancelled.
func serve(ctx context.Context, ln net.Listener, id string, log *zap.Logger) error {
	pln := &pp.Listener{Listener: ln, ConnPolicy: requireFromLocal, ReadHeaderTimeout: headerTimeout}
	srv := &http.Server{
		Handler:           handler(id, os.Getpid()),
		ReadHeaderTimeout: readHeaderLimit,
		IdleTimeout:       idleTimeout,
		ErrorLog:          errorLog(log),
		// Keep the raw connection for the handler. Runs in the accept
		// loop, so it must not read the PROXY header (RemoteAddr would).
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(pln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("hello: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("graceful shutdown incomplete, closing connections", zap.Error(err))
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("hello: serve: %w", err)
	}
	return nil
}

// requireFromLocal trusts PROXY headers from loopback and unix peers, and
// requires one from them; any other peer is dropped without stopping Accept.
func requireFromLocal(o pp.ConnPolicyOptions) (pp.Policy, error) {
	switch a := o.Upstream.(type) {
	case *net.UnixAddr:
		return pp.REQUIRE, nil
	case *net.TCPAddr:
		if a.IP.IsLoopback() {
			return pp.REQUIRE, nil
		}
	}
	return pp.REJECT, fmt.Errorf("%w: %v is not a local peer", pp.ErrInvalidUpstream, o.Upstream)
}

type connKey struct{}

func handler(id string, pid int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "worker %s (pid %d) says hello to %s\n", id, pid, clientOf(r))
	})
}

// clientOf is the client IP from the PROXY header (r.RemoteAddr, as
// rewritten by pp.Conn). A LOCAL header (a health check) carries no client,
// so it is answered with the socket's address: the peer's IP over TCP, the
// socket path over a unix socket.
func clientOf(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	if c, ok := r.Context().Value(connKey{}).(net.Conn); ok && (r.RemoteAddr == "" || r.RemoteAddr == "@") {
		return c.LocalAddr().String()
	}
	return r.RemoteAddr
}

// errorLog routes net/http's own complaints (bad requests, PROXY header
// errors on accepted connections) to log at Debug: they concern one client.
func errorLog(log *zap.Logger) *stdlog.Logger {
	l, err := zap.NewStdLogAt(log, zap.DebugLevel)
	if err != nil { // only for an invalid level
		return zap.NewStdLog(log)
	}
	return l
}
