// Package relay is stickyd's connection engine: it moves bytes between a
// client connection and its backend connection until both directions end.
//
// The rest of stickyd sees the Engine interface and the socket seam. The
// handshake reads the client address, dials the backend and formats the
// PROXY header (Pair.Header); then it hands both sockets to an Engine with
// Start (or, on the loop that accepted the client, to a Starter; see
// Accept on the loops) and returns. From that moment the Engine owns both
// connections: it closes them, and calls Pair.Done exactly once when the
// pair is finished.
//
// The socket seam is every socket call before Start, in one place: an Engine
// that makes its own sockets implements SocketMaker (the epoll engine: a
// Socket is a bare descriptor, accepted with accept4(2) by
// EpollEngine.Listener or dialed by EpollEngine.DialTimeout, with package
// net's TCP options; Start takes it without a system call of its own, where
// a net.Conn costs it a dup(2), an fcntl(2) and a close(2) with its
// netpoller unregistration). ClientConn, AddrPorts, ReadNow (the
// handshake's sniff) and TCPConn work on a Socket and on a *net.TCPConn
// alike, through small interfaces, so that the caller never asserts which
// it holds. DupListener duplicates a listening socket for an upgrade.
//
// Files say which engine they serve: epoll_*.go, goroutine_*.go; relay.go
// holds what both share, socket_linux.go, listen_linux.go and conn.go the
// seam. stickyd is Linux-only (package internal/linuxonly).
//
//	eng := relay.NewGoroutineEngine()
//	eng.Start(relay.Pair{Client: c, Backend: b, Pending: buffered, Idle: time.Hour,
//		Done: func(s relay.Stats) { log.Debug("closed", zap.Int64("bytes_in", s.BytesIn)) }})
//
// # Design of the epoll engine
//
// Descriptors. Start takes each socket out of the Go runtime. A Socket
// (socket_linux.go: accepted with accept4 by Listener, or dialed by DialTimeout) is a
// bare descriptor already, taken as it is; if it waited in one of our loops
// (epoll_wait.go) its disabled registration there is re-armed, and the pair
// goes to that loop. From a net.Conn, Start dups the descriptor
// (F_DUPFD_CLOEXEC, under RawConn.Control) and closes the net.Conn, which
// also removes the original from the Go netpoller. The dup shares the socket
// and its O_NONBLOCK flag; it is the only descriptor left, owned by the
// engine until the pair finishes. (Keeping the net.Conn and using its
// descriptor raw would leave the socket registered with the Go netpoller
// too, which would then wake for every event of ours, and would keep the
// net.Conn and its poll descriptor alive per pair.)
//
// Loops. There are EpollOptions.Loops loops (default GOMAXPROCS), each a
// goroutine with its own epoll set; Start spreads pairs round-robin (one
// loop measured the same CPU per connection as two, on 2 cores), and a
// pair whose client a loop accepted stays there (Accept on the loops)
// unless it turns bulk on a crowded loop (Bulk pairs move). Each socket
// is registered once, edge-triggered, for EPOLLIN and EPOLLRDHUP, and
// keeps readable/writable flags that events set and EAGAIN clears. A
// socket is assumed writable until a write returns EAGAIN; only then is
// EPOLLOUT added (one epoll_ctl, for good), so short connections never wake
// the loop just to learn that a fresh socket is writable.
// Each loop clocks the time from a wake-up to the park that follows
// (EpollEngine.Busy: one clock reading more per wake-up, at the park): the operator's measure
// of how close the loops are to their limit.
//
// Parking. The loop does not block an OS thread in epoll_wait: a goroutine
// blocked in a syscall makes the runtime hand its P to another thread, and
// with LockOSThread every wake-up is a futex hand-off between threads (the
// futex/nanosleep storm seen in an earlier design). Instead the epoll
// descriptor itself is given to the Go netpoller (os.NewFile of a
// non-blocking epoll fd, readable while it has events), and the loop runs
// inside RawConn.Read: epoll_wait with timeout 0 until nothing is left, then
// it returns false and parks like any goroutine reading a socket. Timer
// wake-ups are the file's read deadline. Start writes Pair.Header and
// Pair.Pending to the backend itself (one write(2), from the caller's
// goroutine), puts the pair in the loop's inbox, registers the sockets, and
// writes the loop's eventfd only if the loop is parked and has work of its
// own for the pair (bytes the backend did not take, an idle timeout to
// arm); the loop adopts the inbox after every epoll_wait, so any event of a
// pair finds it adopted. CloseAll, Close and a failed registration also go
// through the inbox and the eventfd. All the loop's system calls are
// non-blocking and made with RawSyscall (see epoll_sys.go).
//
// Data. A direction starts in buffer mode: read(2) into the loop's shared
// buffer (BufferSize, 64 KiB) and write(2) straight to the destination; a
// pair holds no buffer. Only when the destination takes less than was read
// are the rest copied to a heap slice, held until written. A read that fills
// the buffer means a bulk transfer: the direction takes a pipe from the
// loop's pool and splices (socket -> pipe -> socket, SPLICE_F_MOVE) until the
// source is drained and the pipe empty, then returns the pipe. The engine
// holds at most EpollOptions.MaxPipes pipes, pooled or in use; a direction
// that finds none stays in buffer mode. Like
// HAProxy's splice-auto, small exchanges cost one read and one write, and
// bulk costs no copy through user space. The pipe is only refilled when
// empty, so EAGAIN from splice means the source is drained, never that the
// pipe is full. A short read(2) means the socket is drained too (epoll
// reports every later arrival as a new edge), except after EPOLLRDHUP,
// where the loop reads on to the EOF.
//
// Back-pressure. While a direction has bytes pending (heap slice or pipe)
// and its destination is not writable, its source is not read; EPOLLOUT on
// the destination resumes it. Bytes are never dropped or reordered:
// Pair.Header and Pair.Pending, joined, are the first pending slice of the
// client -> backend direction (one write for both).
//
// Fairness. One pair moves at most 1 MiB per direction per service, then
// waits its turn in the loop's ready queue (FIFO: round-robin among the
// pairs with more to move). A loop moves at most 2 MiB per wake-up
// (epTurnBudget): past that, events of pairs in bulk (splice) mode only
// queue them, while pairs in buffer mode (handshakes, short exchanges) are
// still served at once, and once the batch is done the loop yields: it
// writes its own eventfd and parks, so the Go scheduler runs the accept
// loop, the handshakes and anything the netpoller has before the loop
// takes its next turn. Without that, 60 downloads kept both loops busy in
// their RawConn.Read callbacks, the accept loop ran only when sysmon
// preempted them, and new connections took 80-160 ms (p50) on 2 cores.
//
// Ends. EOF on a source, once its bytes are flushed, shuts the destination
// down for writing (half-close) and switches the pair's timeout to Linger;
// the other direction keeps flowing. When both directions have ended the
// sockets are closed. A read, write or socket error (ECONNRESET, EPIPE,
// EPOLLERR) ends the pair with Stats.Err set, once what the failed socket
// received before is delivered (fail); the other socket is then closed
// only once its peer has what was written to it (closing.go).
//
// Timeouts. Each loop has a timing wheel (Tick resolution, 1024 slots).
// Moving bytes only stores the loop's clock in the pair; the wheel checks
// the real deadline when it reaches the pair's slot and re-files it if it
// was active, so the cost is one wheel operation per timeout period. The
// loop's deadline is set for the next non-empty slot only.
//
// Accept on the loops. EpollEngine.Accept gives each loop listening
// sockets of its own: the sockets of one SO_REUSEPORT group
// (ListenGroup: the configured listener, given the option, and one more
// socket of its protocol bound beside it per extra loop; the daemon's is
// plain TCP, ListenTCP, not Go's default Multipath TCP), registered
// level-triggered in that loop's epoll set. The kernel hands each new
// connection to one socket of the group, so one loop wakes for it, accepts
// it (accept4, up to 32 per event), and calls the Acceptor on its own
// goroutine. After a whole batch the loop waits again before it parks:
// the Go netpoller watches the loop's set edge-triggered, so a listener
// still ready in it would not
// wake the loop again (the rest of a burst would wait for the loop's next
// event, as long as its next timeout). The server's
// Acceptor runs the handshake there as far as it goes without waiting
// (the sniff of what the client sent, a trusted upstream's header if it
// has arrived whole, DialNow to a loopback or unix-socket backend, whose
// connect(2) completes inside the call) and starts the pair on the same loop
// (loopStarter: no inbox, no eventfd, no other goroutine). A connection is
// accepted, handshaken and relayed by one thread, as in nginx and HAProxy;
// what would wait (a backend off loopback or by host name, a header still
// on its way) goes to a handshake goroutine and EpollEngine.Start.
//
// Why a group and not one listener in every loop's set: the loops' epoll
// sets are themselves watched by the Go netpoller, and EPOLLEXCLUSIVE
// does not reach through that nesting, so every loop would wake for every
// connection. Another stickyd still gets "address already in use" (its
// listener has no SO_REUSEPORT), and an upgrade hands the whole group over
// (upgrade.Listener.Group): no socket of the group is ever closed with
// connections in its queue while the service goes on.
//
// Admission. Acceptor.Admit takes a connection slot before each accept4; at
// the limit the loop takes its listeners out of its set (clients wait in
// the backlog) until Accepting.Resume. An accept error (EMFILE) pauses the
// loop's accepting for the pause AcceptError returns. A silent client is
// relayed at once with Pair.HoldReplies: its backend's bytes wait for the
// client's first bytes to pass the PROXY check (Pair.RefuseProxy), or the
// hold's end, checked by the wheel (a client then stalled in the middle of
// a signature is refused).
//
// Fewer loops accept at low load. Accepting.Spread(n) puts listener i in
// the set of loop i mod n; the daemon calls it with its adaptive
// GOMAXPROCS while few connections are open, so that at low load the loops
// beyond the Ps park instead of each waking for its share of the
// connections (measured on 2 cores: 4-13% less CPU per connection at
// 3000/s). Each listener is added to its new
// loop before it leaves the old one, so it is never unwatched.
//
// Bulk pairs move. Placement at accept (the kernel's hash, or Spread) is
// blind to what a connection will carry: downloads opened in a quiet spell
// all landed on the one accepting loop and stayed there (2 cores: 800-920
// MB/s instead of about 2000). So when a pair turns bulk (its first splice
// pipe) it is counted in its loop's bulk pairs, and at the end of the batch
// a loop with at least two more than the least loaded one hands it over
// (epoll_move.go): out of its ready queue, wheel, table and epoll set, into
// the other loop's inbox and set, both under that loop's lock, with its
// pipes, pending bytes, ends and deadlines. The new loop assumes both
// sockets readable and writable (an EAGAIN each at most). No pair moves
// while CloseAll runs or a loop stops, and a pair moves once at most as
// bulk.
//
// Busy loops shed long-lived pairs. Connections that never turn bulk can
// crowd a loop too: websockets opened in a quiet spell, while one loop
// accepted, that all get busy later. Every 100 ms a loop weighs the
// loops' busy clocks; when it was busy over half the window and a quarter
// of the window more than the least busy loop that accepts, it hands that
// loop enough of its active pairs to close half the gap, as they are next
// served (epoll_move.go). It picks only pairs that have been on it for
// two windows (short connections never move) and moved bytes in this one.
// Loops that have no P take nothing: only those that accept (Spread) may.
// Measured on 2 cores (bench's chat scenario: 100 connections opened at
// 50/s, then each echoing 64-byte messages as fast as it could): in the
// rounds where the adaptive GOMAXPROCS gave the loops a second P, 50 of
// the 100 moved and messages per second rose by a median 16% (8 rounds:
// -1% to +21%; the load generator shares the cores). In the other rounds
// stickyd stayed on one P, at about 0.6 of a core, and nothing moved.
// Without this, a single accepting loop on 16 cores would have kept them
// all on one core.
//
// Done. Callbacks run on one goroutine per loop, in close order, after both
// sockets are closed: a slow callback delays the Done calls of its loop,
// never I/O. The loop hands them over once per batch of events. With
// EpollOptions.InlineDone they run on the loop itself after each batch
// instead: no faster at saturation, where batches are large, but below it
// every connection closes in a batch of its own and the hand-off cost a
// goroutine wake-up each (measured at 1000 connections/s on 2 cores: about
// a tenth of the CPU per connection).
package relay

import _ "github.com/stickyd/stickyd/internal/linuxonly" // stickyd is Linux-only
