// Command go-worker is a stickyd worker in Go: an HTTP server that reads the
// client's address from the PROXY header stickyd sends (github.com/pires/go-proxyproto).
//
//	go build -o go-worker ./examples/go
//	stickyd --listen :3000 --workers 4 -- ./go-worker
//
// It listens where stickyd says (PORT on 127.0.0.1, or the Unix socket
// SOCKET), answers GET / with "worker <id> (pid <pid>) says hello to <client
// ip>", and on SIGTERM stops accepting and lets open requests finish.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

func main() {
	network, addr := "tcp", "127.0.0.1:"+os.Getenv("PORT")
	if sock := os.Getenv("SOCKET"); sock != "" {
		network, addr = "unix", sock
		os.Remove(sock) // a dead worker's socket file
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		log.Fatalf("listen on %s (PORT or SOCKET from stickyd): %v", addr, err)
	}
	// Every connection must open with a PROXY header (REQUIRE); a v2 LOCAL
	// or v1 UNKNOWN header (a health check) keeps the socket's address.
	pl := &proxyproto.Listener{
		Listener:          ln,
		ConnPolicy:        func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil },
		ReadHeaderTimeout: 5 * time.Second,
	}
	srv := &http.Server{Handler: http.HandlerFunc(hello), ReadHeaderTimeout: 10 * time.Second}
	go shutdownOnSIGTERM(srv)
	if err := srv.Serve(pl); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}

// hello names the worker and the client address the PROXY header carried.
func hello(w http.ResponseWriter, r *http.Request) {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	fmt.Fprintf(w, "worker %s (pid %d) says hello to %s\n", os.Getenv("STICKYD_WORKER_ID"), os.Getpid(), host)
}

func shutdownOnSIGTERM(srv *http.Server) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}
