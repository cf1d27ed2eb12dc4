package server

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Per-client limits (Options.MaxPerClient, max_connections_per_client, on
// the connections a client has open; Options.MaxRatePerClient,
// max_connection_rate_per_client, on those it opens a second). A client is
// an IPv4 address or an IPv6 /64: a host picks new addresses inside its /64
// at will (privacy addresses), so counting each one apart would be no
// limit. The address counted is the real client's, as the backend is told
// it: from the socket, a trusted upstream's PROXY header or the HTTP
// header. A trusted upstream's own address is not counted (its PROXY LOCAL
// health checks, its requests without the header): it speaks for many
// clients.
//
// A client is counted from its backend's pick (its address is known then)
// until its connection closes, and refused, before any backend is dialed,
// when it already has the limit open, or has opened (or tried to open) the
// rate's number of connections in the last second. The counts live in a
// table sharded by the client's hash, so that the loops rarely meet on a
// lock. An entry goes with its last connection; under a rate limit it
// stays until its second has passed, and entries that linger are swept
// when a shard has doubled. So the table holds the clients with
// connections open, and under a rate limit those of the last two seconds.

// errClientLimit refuses a client at its limit of open connections, and
// errClientRate one over its rate (each wrapped with the counts).
var (
	errClientLimit = errors.New("server: client at max_connections_per_client")
	errClientRate  = errors.New("server: client over max_connection_rate_per_client")
)

// clientKey is a client as the limits count it: an IPv4 address (in its
// IPv4-mapped form) or an IPv6 /64, in 16 bytes.
type clientKey [16]byte

// keyOf returns ip's client.
func keyOf(ip netip.Addr) clientKey {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.WithZone("").Prefix(64)
		ip = p.Addr()
	}
	return ip.As16()
}

// clientShards is the number of the table's shards, a power of two.
const clientShards = 64

// clientTable counts open connections, and new ones per second, per client.
type clientTable struct {
	limit  atomic.Int64 // connections a client may have open; 0: no limit
	rate   atomic.Int64 // connections a client may open a second; 0: no limit
	shards [clientShards]clientShard
}

type clientShard struct {
	mu      sync.Mutex
	m       map[clientKey]clientState // guarded by mu
	sweepAt int                       // guarded by mu: sweep when m has this many entries
	_       [40]byte                  // a cache line each, so loops on two shards do not share one
}

// clientState is one client's counts. The rate is over a sliding second,
// estimated from two fixed ones: what was opened in the current second,
// plus the previous second's share that the sliding second still covers.
type clientState struct {
	open      int32 // connections open
	sec       int32 // the current second (Unix time, truncated)
	cur, prev int32 // connections opened (or tried) in sec and in the second before
}

// roll moves st to second sec.
func (st *clientState) roll(sec int32) {
	switch {
	case st.sec == sec:
	case st.sec == sec-1:
		st.prev, st.cur, st.sec = st.cur, 0, sec
	default:
		st.prev, st.cur, st.sec = 0, 0, sec
	}
}

// rate is the connections opened in the second up to ms (Unix
// milliseconds), st rolled to its second. The previous second's share is
// rounded up: a client is never under-counted by the rounding.
func (st *clientState) rate(ms int64) int64 {
	return (int64(st.prev)*(1000-ms%1000)+999)/1000 + int64(st.cur)
}

// stale reports whether st counts nothing at second sec: no connection
// open, and no rate left to remember.
func (st *clientState) stale(sec int32) bool { return st.open == 0 && st.sec < sec-1 }

func (t *clientTable) shard(k clientKey) *clientShard {
	h := binary.LittleEndian.Uint64(k[:8]) ^ binary.LittleEndian.Uint64(k[8:])
	return &t.shards[(h*0x9e3779b97f4a7c15)>>(64-6)]
}

// Verdicts of acquire.
const (
	clientAdmitted = iota
	clientAtLimit  // limit connections open
	clientOverRate // rate connections opened in the last second
)

// acquire counts one more connection of k at ms (Unix milliseconds), unless
// k has limit open or has opened rate in the last second (a limit of 0 is
// none). It returns its verdict and the count that decided it: open
// connections, or the rate. An attempt counts towards the rate even when
// refused, so that a client that keeps trying stays refused until it slows
// down.
func (t *clientTable) acquire(k clientKey, limit, rate, ms int64) (int, int64) {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st, known := sh.m[k]
	verdict, n := clientAdmitted, int64(0)
	if rate > 0 {
		sec := int32(ms / 1000)
		st.roll(sec)
		if n = st.rate(ms); n >= rate {
			verdict = clientOverRate
		}
		st.cur++
	}
	if verdict == clientAdmitted && limit > 0 && int64(st.open) >= limit {
		verdict, n = clientAtLimit, int64(st.open)
	}
	if verdict == clientAdmitted {
		st.open++
		n = int64(st.open)
	}
	if !known && verdict != clientAdmitted && rate == 0 {
		return verdict, n // nothing to remember
	}
	if sh.m == nil {
		sh.m = make(map[clientKey]clientState)
	}
	if !known && len(sh.m) >= sh.sweepAt {
		sh.sweep(int32(ms / 1000))
	}
	sh.m[k] = st
	return verdict, n
}

// sweep deletes the entries that count nothing any more, and sets when the
// next sweep is due: once the shard has doubled. sh.mu is held.
func (sh *clientShard) sweep(sec int32) {
	for k, st := range sh.m {
		if st.stale(sec) {
			delete(sh.m, k)
		}
	}
	sh.sweepAt = max(1024, 2*len(sh.m))
}

// release counts one connection of k fewer at ms. Its entry goes with its
// last connection unless it has a rate still to remember.
func (t *clientTable) release(k clientKey, ms int64) {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st, ok := sh.m[k]
	if !ok {
		return
	}
	st.open--
	if st.open <= 0 && (st.sec == 0 || st.stale(int32(ms/1000))) {
		delete(sh.m, k)
		return
	}
	sh.m[k] = st
}

// eachOpen calls f with every client that has connections open, and how
// many, one shard locked at a time.
func (t *clientTable) eachOpen(f func(k clientKey, open int32)) {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, st := range sh.m {
			if st.open > 0 {
				f(k, st.open)
			}
		}
		sh.mu.Unlock()
	}
}

// clients returns how many clients have connections open (counted).
func (t *clientTable) clients() int {
	var n int
	t.eachOpen(func(clientKey, int32) { n++ })
	return n
}

// ClientCount is one client and its open connections (TopClients).
type ClientCount struct {
	// Client is an IPv4 address, or an IPv6 /64 as a prefix
	// ("2001:db8:0:1::/64").
	Client string `json:"client"`
	Open   int    `json:"open"`
}

// TopClients returns the n clients with the most connections open, most
// first (ties by client), and how many clients have connections open in
// all: those the per-client limits count.
func (s *Server) TopClients(n int) (top []ClientCount, clients int) {
	type entry struct {
		k    clientKey
		open int32
	}
	var all []entry
	s.clients.eachOpen(func(k clientKey, open int32) { all = append(all, entry{k, open}) })
	slices.SortFunc(all, func(a, b entry) int {
		if c := cmp.Compare(b.open, a.open); c != 0 {
			return c
		}
		return bytes.Compare(a.k[:], b.k[:])
	})
	for _, e := range all[:min(n, len(all))] {
		top = append(top, ClientCount{Client: e.k.String(), Open: int(e.open)})
	}
	return top, len(all)
}

// String is k as TopClients shows it.
func (k clientKey) String() string {
	ip := netip.AddrFrom16(k)
	if ip.Is4In6() {
		return ip.Unmap().String()
	}
	return netip.PrefixFrom(ip, 64).String()
}

// SetMaxPerClient sets the per-client connection limit from now on (a
// reload); 0 lifts it. It applies to new connections: none open is closed.
// Those counted before keep being counted until they close; those opened
// while neither limit was on are not counted.
func (s *Server) SetMaxPerClient(n int) { s.clients.limit.Store(int64(max(n, 0))) }

// MaxPerClient returns the per-client connection limit in force; 0: none.
func (s *Server) MaxPerClient() int { return int(s.clients.limit.Load()) }

// SetMaxRatePerClient sets the connections a client may open a second from
// now on (a reload); 0 lifts it.
func (s *Server) SetMaxRatePerClient(n int) { s.clients.rate.Store(int64(max(n, 0))) }

// MaxRatePerClient returns the per-client connection rate limit in force;
// 0: none.
func (s *Server) MaxRatePerClient() int { return int(s.clients.rate.Load()) }

// Clients returns the number of clients with connections counted by the
// per-client limits (0 while they have been off since the start).
func (s *Server) Clients() int { return s.clients.clients() }

// admitClient counts c against the per-client limits, once: a client
// already counted (a loop's handshake handed to a goroutine dials again) or
// exempt passes. Over a limit it returns an error wrapping errClientLimit
// or errClientRate.
func (s *Server) admitClient(c *client) error {
	limit, rate := s.clients.limit.Load(), s.clients.rate.Load()
	if c.counted || limit == 0 && rate == 0 {
		return nil
	}
	ip := c.addr.Addr()
	if ip == c.peer.Addr() && s.trusted(ip) { // an upstream's own connection
		return nil
	}
	switch verdict, n := s.clients.acquire(keyOf(ip), limit, rate, time.Now().UnixMilli()); verdict {
	case clientAtLimit:
		s.metrics.ClientLimit.Add(1)
		return fmt.Errorf("%w: %d open", errClientLimit, n)
	case clientOverRate:
		s.metrics.ClientRate.Add(1)
		return fmt.Errorf("%w: %d connections in the last second", errClientRate, n)
	}
	c.counted = true
	return nil
}

// releaseClient undoes admitClient for a connection that was counted.
func (s *Server) releaseClient(counted bool, addr netip.AddrPort) {
	if counted {
		s.clients.release(keyOf(addr.Addr()), time.Now().UnixMilli())
	}
}
