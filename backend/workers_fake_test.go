package backend

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// The test binary doubles as the worker under supervision: started with
// fakeWorkerEnv set, it runs fakeWorker instead of the tests (from init, so
// before TestMain). Its behaviour is steered by these variables:
//
//	FAKE_GATE=<path>        wait until the file exists before listening
//	FAKE_NEVER_LISTEN=1     never listen
//	FAKE_CRASH_ID=<id>      the worker with that STICKYD_WORKER_ID exits 3 at once
//	FAKE_BROKEN=<path>      exit 3 at once if the file exists (a broken deploy)
//	FAKE_CRASH_AFTER=<path> if the file exists, listen, then exit 4 50 ms later
//	FAKE_IGNORE_TERM_ID=<id> the worker with that id ignores SIGTERM
//	FAKE_DRAIN=<duration>   on SIGTERM, print "draining", wait that long, print "drained", exit 0
//	FAKE_GROW_AT_START=<n>  hold n MiB before listening
//	FAKE_LONG_LINE=<n>      print a line of n 'x' to stdout at start
//	FAKE_PID_DIR=<dir>      write the pid to <dir>/<id>.pid at start
//	FAKE_WRONG_PORT=1       listen on 127.0.0.1:0 instead of PORT
//	FAKE_GARBAGE=1          print binary garbage (NUL, bad UTF-8, escapes, no newline) at start
//
// It always prints "pid=<pid>" to stdout and "hello from stderr" to stderr.
// A client of its listener may send one line: "env" is answered with a JSON
// fakeEnv, "crash" makes the worker exit 3, "grow N" makes it hold N MiB
// more (answered "grown").
const fakeWorkerEnv = "STICKYD_FAKE_WORKER"

func init() {
	switch os.Getenv(fakeWorkerEnv) {
	case "worker":
		os.Exit(fakeWorker())
	case "supervisor":
		os.Exit(fakeSupervisor())
	}
}

type fakeEnv struct {
	Port, Socket, ID, Workers, Custom, Cwd string
	Pid                                    int
	// Channel is NODE_CHANNEL_FD and NODE_CHANNEL_SERIALIZATION_MODE, and
	// whether that descriptor is a Unix socket: "3 json socket".
	Channel string
}

// fakeChannel describes the worker's Node IPC channel (fakeEnv.Channel).
func fakeChannel() string {
	fd, mode := os.Getenv("NODE_CHANNEL_FD"), os.Getenv("NODE_CHANNEL_SERIALIZATION_MODE")
	if fd == "" && mode == "" {
		return ""
	}
	kind := "none"
	var n int
	fmt.Sscan(fd, &n)
	if st, err := os.NewFile(uintptr(n), "channel").Stat(); err == nil && st.Mode()&os.ModeSocket != 0 {
		kind = "socket"
	}
	return strings.Join([]string{fd, mode, kind}, " ")
}

func fakeWorker() int {
	id := os.Getenv("STICKYD_WORKER_ID")
	if os.Getenv("FAKE_IGNORE_TERM_ID") == id {
		signal.Ignore(syscall.SIGTERM)
	} else {
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		drain, _ := time.ParseDuration(os.Getenv("FAKE_DRAIN"))
		go func() {
			<-term
			fmt.Println("got SIGTERM")
			if drain > 0 {
				fmt.Println("draining")
				time.Sleep(drain)
				fmt.Println("drained")
			}
			os.Exit(0)
		}()
	}
	fmt.Printf("pid=%d\n", os.Getpid())
	fmt.Fprintln(os.Stderr, "hello from stderr")
	if dir := os.Getenv("FAKE_PID_DIR"); dir != "" {
		_ = os.WriteFile(dir+"/"+id+".pid", fmt.Appendf(nil, "%d", os.Getpid()), 0o600)
	}
	if n := os.Getenv("FAKE_LONG_LINE"); n != "" {
		var size int
		fmt.Sscan(n, &size)
		fmt.Println(strings.Repeat("x", size))
	}
	if os.Getenv("FAKE_GARBAGE") != "" {
		os.Stdout.Write([]byte("\x00\xff\xfe\x1b[31m{\"msg\":\"forged\"}\r\x80\xc3"))
	}
	if os.Getenv("FAKE_CRASH_ID") == id {
		return 3
	}
	if broken := os.Getenv("FAKE_BROKEN"); broken != "" {
		if _, err := os.Stat(broken); err == nil {
			fmt.Fprintln(os.Stderr, "broken deploy")
			return 3
		}
	}
	if os.Getenv("FAKE_NEVER_LISTEN") != "" {
		for {
			time.Sleep(time.Hour)
		}
	}
	if gate := os.Getenv("FAKE_GATE"); gate != "" {
		fmt.Println("waiting for gate")
		for _, err := os.Stat(gate); err != nil; _, err = os.Stat(gate) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if n := os.Getenv("FAKE_GROW_AT_START"); n != "" {
		var mib int
		fmt.Sscan(n, &mib)
		grow(mib)
	}
	ln, err := fakeListen()
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		return 1
	}
	if f := os.Getenv("FAKE_CRASH_AFTER"); f != "" {
		if _, err := os.Stat(f); err == nil {
			time.AfterFunc(50*time.Millisecond, func() { os.Exit(4) })
		}
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go fakeServe(c)
	}
}

// leaked holds what grow allocated.
var (
	leakedMu sync.Mutex
	leaked   [][]byte
)

// grow makes the worker hold mib MiB more, touched so that it is resident.
func grow(mib int) {
	b := make([]byte, mib<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	leakedMu.Lock()
	leaked = append(leaked, b)
	leakedMu.Unlock()
}

func fakeListen() (net.Listener, error) {
	if s := os.Getenv("SOCKET"); s != "" {
		return net.Listen("unix", s)
	}
	if os.Getenv("FAKE_WRONG_PORT") != "" {
		return net.Listen("tcp", "127.0.0.1:0")
	}
	return net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
}

func fakeServe(c net.Conn) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	cmd := strings.TrimSpace(line)
	if n, ok := strings.CutPrefix(cmd, "grow "); ok { // a leak of n MiB, touched so that it is resident
		var mib int
		fmt.Sscan(n, &mib)
		grow(mib)
		fmt.Fprintln(c, "grown")
		return
	}
	switch cmd {
	case "crash":
		os.Exit(3)
	case "env":
		cwd, _ := os.Getwd()
		_ = json.NewEncoder(c).Encode(fakeEnv{
			Port: os.Getenv("PORT"), Socket: os.Getenv("SOCKET"), ID: os.Getenv("STICKYD_WORKER_ID"),
			Workers: os.Getenv("STICKYD_WORKERS"), Custom: os.Getenv("FAKE_CUSTOM"), Cwd: cwd, Pid: os.Getpid(),
			Channel: fakeChannel(),
		})
	}
}

// fakeSupervisor is a stickyd stand-in for the Pdeathsig test: it supervises
// one fake worker on FAKE_PORT_BASE, prints "ready" once the worker is ready,
// and runs until it is killed.
func fakeSupervisor() int {
	exe, err := os.Executable()
	if err != nil {
		return 1
	}
	var base int
	fmt.Sscan(os.Getenv("FAKE_PORT_BASE"), &base)
	cfg := WorkerConfig{Command: []string{exe}, PortBase: base, Env: map[string]string{fakeWorkerEnv: "worker"}}
	sup, err := NewSupervisor(cfg, zap.NewNop(), func(_ int, ready bool) {
		if ready {
			fmt.Println("ready")
		}
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = sup.Run(context.Background())
	return 0
}
