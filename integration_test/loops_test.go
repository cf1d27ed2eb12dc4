package integration_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"golang.org/x/sys/unix"
)

// Downloads opened while stickyd idles all land on the one event loop that
// accepts at low load (its adaptive GOMAXPROCS is down to 1); as they turn
// bulk, those above the other loop's count by two move there
// (stickyd_bulk_moves_total), and every byte arrives.
func TestBulkTransfersMoveBetweenLoops(t *testing.T) {
	if runtime.NumCPU() < 2 || os.Getenv("GOMAXPROCS") != "" {
		t.Skip("one CPU, or GOMAXPROCS set: no adaptive GOMAXPROCS, no single accepting loop")
	}
	const clients, size = 8, 16 << 20
	dl := serveDownloads(t, size)
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "dl="+dl.Addr(), "--send-proxy", "none", "--admin", adm, "--log-level", "debug")
	testkit.WaitFor(t, "GOMAXPROCS down to 1 while idle", func() bool {
		return strings.Contains(p.stderr.String(), `"gomaxprocs":1`)
	})
	got := make(chan int64, clients)
	for i := range clients {
		go func() {
			c, err := testkit.DialFrom(testkit.ClientIP(i*7), p.addr)
			if err != nil {
				got <- -1
				return
			}
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			got <- n
		}()
	}
	for range clients {
		if n := testkit.Await(t, got, "a download hangs"); n != size {
			t.Errorf("a client got %d bytes, want %d", n, size)
		}
	}
	if v := opsMetric(t, adm, "stickyd_bulk_moves_total"); v < 1 {
		t.Errorf("stickyd_bulk_moves_total = %v: no download moved off the accepting loop", v)
	}
	// 128 MiB through the loops took them some time: a busy clock that
	// does not run would read 0.
	if v := opsMetric(t, adm, "stickyd_loop_busy_seconds_total"); v <= 0 {
		t.Errorf("stickyd_loop_busy_seconds_total = %v after 128 MiB relayed", v)
	}
	if v := opsMetric(t, adm, "stickyd_event_loops"); v != float64(runtime.GOMAXPROCS(0)) {
		t.Errorf("stickyd_event_loops = %v, want one per core it may use (%d)", v, runtime.GOMAXPROCS(0))
	}
}

// Long-lived connections opened while stickyd idles all land on the one
// event loop that accepts at low load. Once their messages keep that loop
// busy, the adaptive GOMAXPROCS adds a P, a second loop accepts, and the
// busy loop hands it some of its pairs (stickyd_busy_moves_total): the
// socket.io case of clients that connect in a quiet spell and get busy
// later. Every message comes back whole and in order across the moves.
func TestChattyClientsShedBetweenLoops(t *testing.T) {
	if runtime.NumCPU() < 2 || os.Getenv("GOMAXPROCS") != "" {
		t.Skip("one CPU, or GOMAXPROCS set: no adaptive GOMAXPROCS, no single accepting loop")
	}
	// 100 clients: under the 64 per loop past which every loop accepts
	// (spreadFor; 128 on 2 cores), and enough round trips in flight to
	// keep one loop busy on 2 cores. The echo splices in the kernel and
	// the clients read without a buffer, so that the race-instrumented
	// test leaves stickyd the CPU to get busy.
	const clients = 100
	echo := serveEcho(t)
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "echo="+echo.Addr(), "--send-proxy", "none", "--admin", adm, "--log-level", "debug")
	testkit.WaitFor(t, "GOMAXPROCS down to 1 while idle", func() bool {
		return strings.Contains(p.stderr.String(), `"gomaxprocs":1`)
	})
	stop := make(chan struct{})
	errs := make(chan error, clients)
	conns := make([]net.Conn, clients)
	for i := range conns {
		conns[i] = testkit.Dial(t, testkit.ClientIP(i), p.addr)
	}
	for i, c := range conns {
		go chat(c, i, stop, errs)
	}
	testkit.WaitFor(t, "the busy loop to hand pairs to the other", func() bool {
		return opsMetric(t, adm, "stickyd_busy_moves_total") >= 1
	}, testkit.Every(50*time.Millisecond))
	close(stop)
	for range clients {
		if err := testkit.Await(t, errs, "a client hangs"); err != nil {
			t.Error(err)
		}
	}
}

// Scrapes of the admin API at rest add no P: goroutines that wait for a P
// count for the adaptive GOMAXPROCS only while the event loops work, and
// an admin request is no work of theirs. (Before, each scrape at rest
// could make one goroutine wait and add a P for half a second.)
func TestScrapesAtRestAddNoP(t *testing.T) {
	if runtime.NumCPU() < 2 || os.Getenv("GOMAXPROCS") != "" {
		t.Skip("one CPU, or GOMAXPROCS set: no adaptive GOMAXPROCS")
	}
	echo := serveEcho(t)
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "echo="+echo.Addr(), "--send-proxy", "none", "--admin", adm, "--log-level", "debug")
	testkit.WaitFor(t, "GOMAXPROCS down to 1 while idle", func() bool {
		return strings.Contains(p.stderr.String(), `"gomaxprocs":1`)
	})
	from := len(p.stderr.String())
	pace := time.NewTicker(50 * time.Millisecond)
	defer pace.Stop()
	for range 60 { // 3 s: through the controller's rest and out of it
		if v := opsMetric(t, adm, "stickyd_event_loops"); v < 1 {
			t.Fatalf("stickyd_event_loops = %v", v)
		}
		<-pace.C
	}
	if log := p.stderr.String()[from:]; strings.Contains(log, `"gomaxprocs":2`) {
		t.Errorf("a second P for scrapes at rest:\n%s", log)
	}
}

// The adaptive GOMAXPROCS stays within the CPU limit as it changes, as the
// Go runtime's own default would: with stickyd's threads pinned to one CPU
// (a cpuset shrunk under a running container) it says so in the log and
// never takes a second P, and when the CPU comes back it says that too.
// Clients keep chatting throughout, so that the controller samples rather
// than rests.
func TestGOMAXPROCSFollowsCPULimit(t *testing.T) {
	if runtime.NumCPU() < 2 || os.Getenv("GOMAXPROCS") != "" {
		t.Skip("one CPU, or GOMAXPROCS set: no adaptive GOMAXPROCS")
	}
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil || all.Count() < 2 {
		t.Skip("fewer than 2 CPUs in this process's affinity mask")
	}
	echo := serveEcho(t)
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "echo="+echo.Addr(), "--send-proxy", "none", "--admin", adm, "--log-level", "debug")
	// pin sets the affinity of every thread of stickyd: threads made
	// later inherit it from the thread that makes them.
	pin := func(set unix.CPUSet) {
		t.Helper()
		for range 3 { // again, for threads made meanwhile
			tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, task := range tasks {
				if tid, err := strconv.Atoi(task.Name()); err == nil {
					unix.SchedSetaffinity(tid, &set) // a thread may have ended
				}
			}
		}
	}
	stop := make(chan struct{})
	errs := make(chan error, 8)
	for i := range cap(errs) {
		go chat(testkit.Dial(t, testkit.ClientIP(i), p.addr), i, stop, errs)
	}
	type limitLine struct {
		Limit int `json:"cpu_limit"`
		Loops int `json:"event_loops"`
	}
	const lowered = "CPU limit lowered: GOMAXPROCS and the accepting event loops stay within it"
	const back = "CPU limit back to what stickyd started with"
	var one unix.CPUSet
	one.Set(firstCPU(all))
	pin(one)
	testkit.WaitFor(t, "the log to tell of a CPU limit of 1", func() bool {
		l := logsOf[limitLine](p, lowered)
		return len(l) == 1 && l[0].Limit == 1 && l[0].Loops >= 2
	})
	testkit.WaitFor(t, "stickyd_gomaxprocs_ceiling at 1", func() bool {
		return opsMetric(t, adm, "stickyd_gomaxprocs_ceiling") == 1
	})
	pin(all)
	testkit.WaitFor(t, "the log to tell of the CPU limit back", func() bool {
		return len(logsOf[limitLine](p, back)) == 1
	})
	testkit.WaitFor(t, "stickyd_gomaxprocs_ceiling back to the loops", func() bool {
		return opsMetric(t, adm, "stickyd_gomaxprocs_ceiling") == opsMetric(t, adm, "stickyd_event_loops")
	})
	for _, result := range []string{"dropped", "kept"} { // how many: the load's, the machine's
		if v := opsMetric(t, adm, `stickyd_gomaxprocs_trials_total{result="`+result+`"}`); v < 0 {
			t.Errorf("stickyd_gomaxprocs_trials_total{result=%q} missing with the adaptive GOMAXPROCS", result)
		}
	}
	close(stop)
	for range cap(errs) {
		if err := testkit.Await(t, errs, "a client hangs"); err != nil {
			t.Error(err)
		}
	}
	// Between the two lines, no second P.
	log := p.stderr.String()
	from := strings.Index(log, lowered)
	to := strings.Index(log, back)
	if from < 0 || to < from {
		t.Fatalf("log lines out of order")
	}
	if i := strings.Index(log[from:to], `"gomaxprocs":2`); i >= 0 {
		t.Errorf("GOMAXPROCS went to 2 with the threads on one CPU:\n%s", log[from:to])
	}
}

// GOMAXPROCS set above the CPU limit (more event loops than CPUs) is a
// setup mistake stickyd names once at start, with the fix; at or below
// the limit it says nothing.
func TestGOMAXPROCSAboveCPULimitWarned(t *testing.T) {
	type warning struct {
		Env   string `json:"GOMAXPROCS"`
		Loops int    `json:"event_loops"`
		Limit int    `json:"cpu_limit"`
		Fix   string `json:"fix"`
	}
	const msg = "GOMAXPROCS is above the CPU limit: more event loops than CPUs to run them"
	backend := serveEcho(t)
	var adm string // the last run's admin address
	run := func(env string) *proc {
		addr := testkit.FreePort(t)
		adm = testkit.FreePort(t)
		return launchVia(t, []string{"env", "GOMAXPROCS=" + env}, t.TempDir(), addr,
			"--listen", addr, "--log-format", "json", "--backend", "echo="+backend.Addr(), "--send-proxy", "none", "--admin", adm)
	}
	over := strconv.Itoa(runtime.NumCPU() + 2)
	w := logsOf[warning](run(over), msg)
	if len(w) != 1 || w[0].Env != over || w[0].Loops != runtime.NumCPU()+2 || w[0].Limit > runtime.NumCPU() || !strings.Contains(w[0].Fix, "unset GOMAXPROCS") {
		t.Errorf("GOMAXPROCS=%s on %d CPUs: warnings %+v, want one naming both and the fix", over, runtime.NumCPU(), w)
	}
	if w := logsOf[warning](run("1"), msg); len(w) != 0 {
		t.Errorf("GOMAXPROCS=1: warned %+v", w)
	}
	// GOMAXPROCS fixed: no adaptive GOMAXPROCS, no ceiling of its own, no
	// trials.
	for _, series := range []string{"stickyd_gomaxprocs_ceiling", `stickyd_gomaxprocs_trials_total{result="dropped"}`} {
		if v := opsMetric(t, adm, series); v != -1 {
			t.Errorf("GOMAXPROCS=1: %s = %v, want it left out", series, v)
		}
	}
}

// firstCPU is the lowest CPU in set.
func firstCPU(set unix.CPUSet) int {
	for cpu := range 1024 {
		if set.IsSet(cpu) {
			return cpu
		}
	}
	return 0
}

// chat is client i of an echo: it sends 512 B messages numbered by client
// and sequence over c, one at a time, and checks each echo, until stop is
// closed; then it closes c and sends errs nil, or the first error.
func chat(c net.Conn, i int, stop <-chan struct{}, errs chan<- error) {
	defer c.Close()
	msg := make([]byte, 512)
	back := make([]byte, len(msg))
	binary.BigEndian.PutUint32(msg, uint32(i))
	c.SetDeadline(time.Now().Add(testkit.Guard))
	for seq := uint32(0); ; seq++ {
		select {
		case <-stop:
			errs <- nil
			return
		default:
		}
		binary.BigEndian.PutUint32(msg[4:], seq)
		if _, err := c.Write(msg); err != nil {
			errs <- fmt.Errorf("client %d, message %d: %w", i, seq, err)
			return
		}
		if _, err := io.ReadFull(c, back); err != nil {
			errs <- fmt.Errorf("client %d, message %d: %w", i, seq, err)
			return
		}
		if !bytes.Equal(back, msg) {
			errs <- fmt.Errorf("client %d, message %d: echoed % x", i, seq, back[:8])
			return
		}
	}
}

// serveDownloads serves size bytes on each connection, then closes it,
// until the test ends.
func serveDownloads(t *testing.T, size int) *testkit.Tracked {
	block := make([]byte, 1<<20)
	var tr testkit.Tracked
	tr.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(c net.Conn) {
		defer tr.Forget(c)
		defer c.Close()
		for sent := 0; sent < size; sent += len(block) {
			if _, err := c.Write(block); err != nil {
				return
			}
		}
	})
	return &tr
}

// serveEcho echoes each connection's bytes until its EOF, in the kernel
// (io.Copy between TCP sockets splices), until the test ends.
func serveEcho(t *testing.T) *testkit.Tracked {
	var tr testkit.Tracked
	tr.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(c net.Conn) {
		defer tr.Forget(c)
		defer c.Close()
		io.Copy(c, c)
	})
	return &tr
}

// A burst of clients (a reconnect storm after a restart, say) is accepted
// whole, though nothing else wakes the event loops afterwards: each client
// sends one byte before it is accepted and nothing more, and the backend
// answers nothing. A loop that had accepted a batch of 32 used to park with
// the rest of the backlog still queued, until its next event.
func TestBurstOfClientsAccepted(t *testing.T) {
	const clients = 1000
	var quiet testkit.Tracked // holds what it accepts, answers nothing
	quiet.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(net.Conn) {})
	adm := testkit.FreePort(t)
	p := startStickyd(t, "--backend", "quiet="+quiet.Addr(), "--send-proxy", "none", "--admin", adm, "--log-level", "debug")
	if runtime.NumCPU() >= 2 && os.Getenv("GOMAXPROCS") == "" {
		// Settled: no change of GOMAXPROCS (and of the accepting loops)
		// wakes a loop during the burst.
		testkit.WaitFor(t, "GOMAXPROCS down to 1 while idle", func() bool {
			return strings.Contains(p.stderr.String(), `"gomaxprocs":1`)
		})
	}
	// Non-blocking connects, fired without waiting for any: the kernel
	// completes each handshake into the listeners' backlogs at once.
	ap := netip.MustParseAddrPort(p.addr)
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	for i := range clients {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
			t.Fatalf("client %d: connect: %v", i, err)
		}
		// A first byte, there before the accept: no hold waits for it
		// (and no hold's end wakes the loop).
		if _, err := unix.Write(fd, []byte{'x'}); err != nil {
			t.Fatalf("client %d: write: %v", i, err)
		}
	}
	testkit.WaitFor(t, "every client of the burst accepted", func() bool {
		return opsMetric(t, adm, "stickyd_connections_open") == clients
	})
}

// An idle stickyd rests its GOMAXPROCS controller (one sample a second
// instead of ten: those samples were nearly all an idle stickyd woke up
// for), and the first client wakes it: the event loop that accepts it
// tells the controller, which samples at once and at its usual pace again.
func TestIdleControllerRestsUntilAClient(t *testing.T) {
	if runtime.NumCPU() < 2 || os.Getenv("GOMAXPROCS") != "" {
		t.Skip("one CPU, or GOMAXPROCS set: no adaptive GOMAXPROCS")
	}
	echo := serveEcho(t)
	p := startStickyd(t, "--backend", "echo="+echo.Addr(), "--send-proxy", "none", "--log-level", "debug")
	resting := func(v bool) func() bool {
		want := fmt.Sprintf(`"msg":"GOMAXPROCS controller","resting":%v`, v)
		return func() bool { return strings.Contains(p.stderr.String(), want) }
	}
	testkit.WaitFor(t, "the controller resting while idle", resting(true))
	c, err := testkit.DialFrom(testkit.ClientIP(1), p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testkit.Guard))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the controller awake after a client", resting(false))
}
