package backend

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"go.uber.org/zap"
)

// The workers' message bus: what Node's cluster primary is to
// @socket.io/cluster-adapter. That adapter (io.adapter(createAdapter()))
// sends its messages with process.send and reads them with
// process.on("message"), and the primary's setupPrimary() relays them:
// each to every other worker, a response only to the worker that asked.
// Under stickyd there is no primary, so stickyd is it: every worker it
// launches gets a Node IPC channel (NODE_CHANNEL_FD, JSON serialization:
// one JSON value per line), and the bus relays the adapter's messages
// between the channels as setupPrimary does. An app keeps its cluster
// adapter, and io.emit still reaches the clients of every worker.
//
// Only the adapter's messages ("source": "_sio_adapter") are relayed; a
// process.send of anything else (pm2's "ready") is ignored. A worker that
// ends is announced to the others at once (the adapter's ADAPTER_CLOSE for
// each of its namespaces), so that serverCount, fetchSockets and
// serverSideEmit acknowledgements stop waiting for it without the
// adapter's 10 s heartbeat timeout. A worker that does not read its
// channel loses messages past maxBusQueue rather than holding stickyd's
// memory or the other workers up.

// busChannelFD is the worker's descriptor of its channel: the first after
// stdin, stdout and stderr (exec.Cmd.ExtraFiles[0]).
const busChannelFD = 3

// maxBusMessage bounds one message (a line); a longer one is dropped, with
// an error line.
const maxBusMessage = 64 << 20

// maxBusQueue bounds the bytes waiting to be written to one worker.
const maxBusQueue = 64 << 20

// adapterSource marks the cluster adapter's messages.
const adapterSource = "_sio_adapter"

// adapterClose is the adapter's MessageType.ADAPTER_CLOSE.
const adapterClose = 13

// workerBus relays the cluster adapter's messages between the workers'
// channels.
type workerBus struct {
	log *zap.Logger
	// maxMessage and maxQueue are maxBusMessage and maxBusQueue, readSize
	// the read buffer of each channel, 64 KiB (tests lower them).
	maxMessage, maxQueue, readSize int
	mu                             sync.Mutex
	members                        map[*busMember]struct{} // guarded by mu
	// relayed and dropped count messages written to a worker's queue, and
	// messages not relayed (too large, a queue full).
	relayed, dropped atomic.Int64
}

func newWorkerBus(log *zap.Logger) *workerBus {
	return &workerBus{log: log, maxMessage: maxBusMessage, maxQueue: maxBusQueue, readSize: 64 << 10, members: make(map[*busMember]struct{})}
}

// busMember is one worker's channel.
type busMember struct {
	bus    *workerBus
	slot   int
	pid    int
	conn   net.Conn
	queue  chan []byte // to write; closed by leave
	queued atomic.Int64
	// uids are the adapter's ids this worker sent messages as (one per
	// namespace), with their namespace; guarded by bus.mu.
	uids      map[string]string
	left      bool          // guarded by bus.mu
	warnedOff atomic.Bool   // the debug line for a message not the adapter's was written
	dropping  bool          // the last message for this worker was dropped; guarded by bus.mu
	done      chan struct{} // closed once the reader and the writer have returned
}

// Messages returns how many of the cluster adapter's messages the workers'
// bus relayed to a worker and dropped; false without the bus (NodeIPC off).
func (s *Supervisor) Messages() (relayed, dropped int64, ok bool) {
	if s.bus == nil {
		return 0, 0, false
	}
	return s.bus.relayed.Load(), s.bus.dropped.Load(), true
}

// namespaces returns the namespaces the adapter of the worker with process
// id pid has spoken in, sorted.
func (b *workerBus) namespaces(pid int) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for m := range b.members {
		if m.pid != pid {
			continue
		}
		for _, nsp := range m.uids {
			if !slices.Contains(out, nsp) {
				out = append(out, nsp)
			}
		}
	}
	slices.Sort(out)
	return out
}

// busChannel makes a worker's channel: the end for stickyd and the end the
// worker inherits (to close once it has started), and the environment
// that makes Node open it.
func busChannel() (ours, theirs *os.File, env []string, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("worker channel: %w", err)
	}
	ours, theirs = os.NewFile(uintptr(fds[0]), "worker-channel"), os.NewFile(uintptr(fds[1]), "worker-channel")
	// STICKYD_IPC tells stickyd-worker that a channel was given: a process
	// without one (behind npm start) says so (node/index.js).
	env = []string{fmt.Sprintf("NODE_CHANNEL_FD=%d", busChannelFD), "NODE_CHANNEL_SERIALIZATION_MODE=json", "STICKYD_IPC=node"}
	return ours, theirs, env, nil
}

// join adds the worker of slot (process pid) on channel f (stickyd's end,
// which join takes over) and starts relaying its messages.
func (b *workerBus) join(slot, pid int, f *os.File) (*busMember, error) {
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("worker channel: %w", err)
	}
	m := &busMember{bus: b, slot: slot, pid: pid, conn: conn, queue: make(chan []byte, 1024),
		uids: make(map[string]string), done: make(chan struct{})}
	b.mu.Lock()
	b.members[m] = struct{}{}
	b.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(m.write)
	wg.Go(m.read)
	go func() {
		wg.Wait()
		close(m.done)
	}()
	return m, nil
}

// close ends m's relaying (its worker is gone) and waits for it.
func (m *busMember) close() {
	m.conn.Close()
	<-m.done
}

// read relays each message m's worker sends, until its channel closes.
func (m *busMember) read() {
	defer m.leave()
	r := bufio.NewReaderSize(m.conn, m.bus.readSize)
	var long []byte // the start of a message longer than r's buffer
	for {
		line, err := r.ReadSlice('\n')
		more := errors.Is(err, bufio.ErrBufferFull) // the line goes on
		if err != nil && !more {
			return // io.EOF: the worker is gone (or closed its channel)
		}
		if len(long)+len(line) > m.bus.maxMessage {
			m.bus.dropped.Add(1)
			m.bus.log.Error("worker sent a message over its IPC channel larger than the limit; dropped",
				zap.Int("worker", m.slot), zap.Int("limit_bytes", m.bus.maxMessage))
			long = nil
			if more && skipLine(r) != nil {
				return
			}
			continue
		}
		if more {
			long = append(long, line...)
			continue
		}
		if len(long) > 0 {
			line, long = append(long, line...), nil
		}
		m.relay(line)
	}
}

// skipLine reads up to the end of the current line.
func skipLine(r *bufio.Reader) error {
	for {
		_, err := r.ReadSlice('\n')
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

// busEnvelope is what the bus reads of a message: whether it is the
// adapter's, from which of its nodes, in which namespace, and, for a
// response, to whom.
type busEnvelope struct {
	Source       string `json:"source"`
	UID          string `json:"uid"`
	Nsp          string `json:"nsp"`
	RequesterUID string `json:"requesterUid"`
}

// relay sends msg (one line, its newline included; valid until the next
// read) where the adapter's setupPrimary would.
func (m *busMember) relay(msg []byte) {
	var env busEnvelope
	if !bytes.Contains(msg, []byte(adapterSource)) || json.Unmarshal(msg, &env) != nil || env.Source != adapterSource {
		if !m.warnedOff.Swap(true) {
			m.bus.log.Debug("worker sent a message over its IPC channel that is not the socket.io cluster adapter's; ignored",
				zap.Int("worker", m.slot))
		}
		return
	}
	b := m.bus
	b.mu.Lock()
	defer b.mu.Unlock()
	if env.UID != "" {
		m.uids[env.UID] = env.Nsp
	}
	out := bytes.Clone(msg)
	for o := range b.members {
		switch {
		case o == m:
		case env.RequesterUID != "":
			if _, ok := o.uids[env.RequesterUID]; ok {
				o.send(out)
				return
			}
		default:
			o.send(out)
		}
	}
}

// send queues msg for m's worker; bus.mu is held.
func (m *busMember) send(msg []byte) {
	if m.left {
		return
	}
	if m.queued.Load()+int64(len(msg)) <= int64(m.bus.maxQueue) {
		select {
		case m.queue <- msg:
			m.queued.Add(int64(len(msg)))
			m.bus.relayed.Add(1)
			m.dropping = false
			return
		default:
		}
	}
	m.bus.dropped.Add(1)
	if !m.dropping { // once per episode
		m.dropping = true
		m.bus.log.Warn("worker is not reading its cluster-adapter messages; dropping them",
			zap.Int("worker", m.slot), zap.Int("pid", m.pid), zap.Int64("queued_bytes", m.queued.Load()),
			zap.String("fix", "its event loop is blocked (long synchronous work), or the others send faster than it reads"))
	}
}

// write writes m's queue to its worker until leave closes the queue.
func (m *busMember) write() {
	failed := false
	for msg := range m.queue {
		m.queued.Add(-int64(len(msg)))
		if !failed {
			_, err := m.conn.Write(msg)
			failed = err != nil // the worker is gone: read ends too
		}
	}
}

// leave takes m off the bus and tells the other workers that its adapter
// nodes are gone.
func (m *busMember) leave() {
	b := m.bus
	b.mu.Lock()
	defer b.mu.Unlock()
	m.left = true
	delete(b.members, m)
	close(m.queue)
	for uid, nsp := range m.uids {
		msg, err := json.Marshal(map[string]any{"source": adapterSource, "type": adapterClose, "uid": uid, "nsp": nsp})
		if err != nil {
			continue
		}
		msg = append(msg, '\n')
		for o := range b.members {
			o.send(msg)
		}
	}
	m.conn.Close()
}
