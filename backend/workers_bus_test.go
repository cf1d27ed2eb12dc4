package backend

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stickyd/stickyd/internal/testkit"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// busWorker is the worker's end of a channel on a test bus.
type busWorker struct {
	conn net.Conn
	in   *bufio.Reader
	m    *busMember
}

func joinBus(t *testing.T, b *workerBus, slot int) *busWorker {
	t.Helper()
	ours, theirs, env, err := busChannel()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(env, " ") != "NODE_CHANNEL_FD=3 NODE_CHANNEL_SERIALIZATION_MODE=json STICKYD_IPC=node" {
		t.Errorf("channel environment %q", env)
	}
	m, err := b.join(slot, 1000+slot, ours)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.FileConn(theirs)
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	w := &busWorker{conn: conn, in: bufio.NewReader(conn), m: m}
	t.Cleanup(func() {
		conn.Close()
		m.close()
	})
	return w
}

// send writes one message, as Node's process.send does with JSON
// serialization.
func (w *busWorker) send(t *testing.T, msg map[string]any) {
	t.Helper()
	raw, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.conn.Write(append(raw, '\n')); err != nil {
		t.Fatal(err)
	}
}

// next reads the next message the bus relayed to w.
func (w *busWorker) next(t *testing.T) map[string]any {
	t.Helper()
	w.conn.SetReadDeadline(time.Now().Add(testkit.Guard))
	line, err := w.in.ReadString('\n')
	if err != nil {
		t.Fatalf("worker %d: no message: %v", w.m.slot, err)
	}
	var msg map[string]any
	if err := json.Unmarshal([]byte(line), &msg); err != nil {
		t.Fatalf("worker %d got %q: %v", w.m.slot, line, err)
	}
	return msg
}

// none checks that w gets nothing more for a moment.
func (w *busWorker) none(t *testing.T) {
	t.Helper()
	w.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if line, err := w.in.ReadString('\n'); err == nil {
		t.Errorf("worker %d got %q, want nothing", w.m.slot, line)
	}
}

func adapterMsg(uid string, typ int, extra ...any) map[string]any {
	m := map[string]any{"source": adapterSource, "uid": uid, "nsp": "/", "type": typ}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i].(string)] = extra[i+1]
	}
	return m
}

// The bus relays the adapter's messages as setupPrimary does: each to every
// other worker, a response only to the worker whose adapter asked; anything
// else a worker sends is ignored.
func TestBusRelaysLikeTheClusterPrimary(t *testing.T) {
	b := newWorkerBus(zap.NewNop())
	w := []*busWorker{joinBus(t, b, 0), joinBus(t, b, 1), joinBus(t, b, 2)}

	w[0].send(t, adapterMsg("a0", 1)) // INITIAL_HEARTBEAT
	for _, o := range w[1:] {
		if got := o.next(t); got["uid"] != "a0" || got["type"] != 1.0 {
			t.Errorf("worker %d got %v", o.m.slot, got)
		}
	}
	w[0].none(t)
	w[1].send(t, adapterMsg("a1", 2))
	w[2].send(t, adapterMsg("a2", 2))
	w[0].next(t)
	w[0].next(t)
	w[2].next(t) // a1's heartbeat
	w[1].next(t) // a2's

	// FETCH_SOCKETS from a0, its answers to a0 only.
	w[0].send(t, adapterMsg("a0", 7, "data", map[string]any{"requestId": "r1"}))
	w[1].next(t)
	w[2].next(t)
	w[2].send(t, adapterMsg("a2", 8, "requesterUid", "a0", "data", map[string]any{"requestId": "r1", "sockets": []int{1, 2}}))
	if got := w[0].next(t); got["type"] != 8.0 || got["uid"] != "a2" {
		t.Errorf("the requester got %v", got)
	}
	w[1].none(t)

	w[1].send(t, map[string]any{"type": "process:msg"}) // pm2's, say
	w[1].conn.Write([]byte("ready\n"))
	w[0].none(t)
	w[2].none(t)
	if n := b.relayed.Load(); n != 9 {
		t.Errorf("relayed %d messages, want 9", n)
	}
}

// A worker that ends is announced to the others at once: the adapter's
// ADAPTER_CLOSE for each namespace it spoke in.
func TestBusAnnouncesAWorkerGone(t *testing.T) {
	b := newWorkerBus(zap.NewNop())
	w0, w1 := joinBus(t, b, 0), joinBus(t, b, 1)
	w0.send(t, adapterMsg("a0", 1))
	m := adapterMsg("a0x", 1)
	m["nsp"] = "/admin"
	w0.send(t, m)
	w1.next(t)
	w1.next(t)
	if ns := b.namespaces(1000); fmt.Sprint(ns) != "[/ /admin]" {
		t.Errorf("worker 0's adapter namespaces %v, want [/ /admin]", ns)
	}
	if ns := b.namespaces(1001); len(ns) != 0 {
		t.Errorf("worker 1, which sent nothing: namespaces %v", ns)
	}
	w0.conn.Close() // the worker exited
	got := map[string]string{}
	for range 2 {
		msg := w1.next(t)
		if msg["type"] != float64(adapterClose) || msg["source"] != adapterSource {
			t.Fatalf("got %v, want ADAPTER_CLOSE", msg)
		}
		got[msg["uid"].(string)] = msg["nsp"].(string)
	}
	if got["a0"] != "/" || got["a0x"] != "/admin" {
		t.Errorf("ADAPTER_CLOSE for %v", got)
	}
	testkit.WaitFor(t, "the member left", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.members) == 1
	})
}

// A worker that does not read loses messages beyond its queue's limit, with
// one warning, and holds no one else up; a message over the size limit is
// dropped with an error, and the next one goes through.
func TestBusLimits(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	b := newWorkerBus(zap.New(core))
	b.maxQueue, b.maxMessage = 64<<10, 200<<10
	w0, w1, stuck := joinBus(t, b, 0), joinBus(t, b, 1), joinBus(t, b, 2)
	pad := strings.Repeat("x", 8<<10)
	for i := range 200 { // 1.6 MB for stuck, which reads none of it
		w0.send(t, adapterMsg("a0", 3, "data", pad, "i", i))
		if got := w1.next(t); got["i"] != float64(i) {
			t.Fatalf("message %d arrived as %v", i, got["i"])
		}
	}
	if n := len(logs.FilterMessage("worker is not reading its cluster-adapter messages; dropping them").All()); n != 1 {
		t.Errorf("%d warnings for the stuck worker, want 1", n)
	}
	if b.dropped.Load() == 0 || stuck.m.queued.Load() > int64(b.maxQueue) {
		t.Errorf("dropped %d, queued %d bytes (limit %d)", b.dropped.Load(), stuck.m.queued.Load(), b.maxQueue)
	}

	w0.send(t, adapterMsg("a0", 3, "data", strings.Repeat("y", 300<<10)))
	w0.send(t, adapterMsg("a0", 3, "data", "after"))
	if got := w1.next(t); got["data"] != "after" {
		t.Errorf("after the oversized message: %v", got["data"])
	}
	if n := len(logs.FilterMessage("worker sent a message over its IPC channel larger than the limit; dropped").All()); n != 1 {
		t.Errorf("%d errors for the oversized message, want 1", n)
	}
}

// With NodeIPC each worker gets its channel as Node opens one (descriptor
// 3, a Unix socket, JSON serialization); without it, none, and a
// NODE_CHANNEL_FD stickyd inherited (started by a Node process) is not
// passed on, since it names a descriptor the worker does not have.
func TestWorkerNodeChannel(t *testing.T) {
	t.Setenv("NODE_CHANNEL_FD", "7")
	t.Setenv("STICKYD_IPC", "node")
	for _, ipc := range []bool{true, false} {
		t.Run(fmt.Sprintf("NodeIPC=%v", ipc), func(t *testing.T) {
			cfg := fakeConfig(t, 2, nil)
			cfg.NodeIPC = ipc
			h := startSupervisor(t, cfg, nil)
			want := ""
			if ipc {
				want = "3 json socket"
			}
			for i, s := range h.sup.Slots() {
				h.waitState(t, i, true)
				if got := askEnv(t, s.Address).Channel; got != want {
					t.Errorf("worker %d: channel %q, want %q", i, got, want)
				}
			}
			if ipc {
				h.sup.bus.mu.Lock()
				n := len(h.sup.bus.members)
				h.sup.bus.mu.Unlock()
				if n != 2 {
					t.Errorf("%d workers on the bus, want 2", n)
				}
			}
			if err := h.stop(t); err != nil {
				t.Fatalf("Run = %v", err)
			}
		})
	}
}

// Whatever the sizes of the messages and of the writes that carry them, the
// bus relays each message whole and in order, and drops exactly those over
// its size limit.
func FuzzBusFraming(f *testing.F) {
	f.Add([]byte{3, 40, 1, 200, 17}, uint8(5))
	f.Add([]byte{90, 91, 120, 0, 2}, uint8(1))
	f.Fuzz(func(t *testing.T, sizes []byte, chunk uint8) {
		if len(sizes) > 40 || chunk == 0 {
			return
		}
		b := newWorkerBus(zap.NewNop())
		b.readSize, b.maxMessage = 16, 150
		from, to := joinBus(t, b, 0), joinBus(t, b, 1)
		var stream []byte
		var want []string
		for i, n := range sizes {
			raw, _ := json.Marshal(adapterMsg("a0", 3, "i", i, "data", strings.Repeat("z", int(n))))
			stream = append(append(stream, raw...), '\n')
			if len(raw)+1 <= b.maxMessage {
				want = append(want, string(raw)+"\n")
			}
		}
		end, _ := json.Marshal(adapterMsg("a0", 3, "end", true))
		stream = append(append(stream, end...), '\n')
		want = append(want, string(end)+"\n")
		go func() { // the writes, in pieces of chunk bytes
			for len(stream) > 0 {
				n := min(int(chunk), len(stream))
				if _, err := from.conn.Write(stream[:n]); err != nil {
					return
				}
				stream = stream[n:]
			}
		}()
		to.conn.SetReadDeadline(time.Now().Add(testkit.Guard))
		for i, w := range want {
			got, err := to.in.ReadString('\n')
			if err != nil || got != w {
				t.Fatalf("message %d: got %q (%v), want %q", i, got, err, w)
			}
		}
	})
}
