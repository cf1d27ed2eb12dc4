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
)

// Per-client connection limit (Options.MaxPerClient,
// max_connections_per_client). A client is an IPv4 address or an IPv6 /64:
// a host picks new addresses inside its /64 at will (privacy addresses), so
// counting each one apart would be no limit. The address counted is the
// real client's, as the backend is told it: from the socket, a trusted
// upstream's PROXY header or the HTTP header. A trusted upstream's own
// address is not counted (its PROXY LOCAL health checks, its requests
// without the header): it speaks for many clients.
//
// A client is counted from its backend's pick (its address is known then)
// until its connection closes, and refused, before any backend is dialed,
// when it already has the limit open. The count lives in a table sharded by
// the client's hash, so that the loops rarely meet on a lock; an entry is
// deleted with its last connection, so the table holds only the clients
// with connections open, whatever the limit.

// errClientLimit refuses a client at its limit (wrapped with the counts).
var errClientLimit = errors.New("server: client at max_connections_per_client")

// clientKey is a client as the limit counts it: an IPv4 address (in its
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

// clientTable counts open connections per client.
type clientTable struct {
	limit  atomic.Int64 // connections a client may have open; 0: no limit
	shards [clientShards]clientShard
}

type clientShard struct {
	mu   sync.Mutex
	open map[clientKey]int32 // guarded by mu; entries > 0
	_    [48]byte            // a cache line each, so loops on two shards do not share one
}

func (t *clientTable) shard(k clientKey) *clientShard {
	h := binary.LittleEndian.Uint64(k[:8]) ^ binary.LittleEndian.Uint64(k[8:])
	return &t.shards[(h*0x9e3779b97f4a7c15)>>(64-6)]
}

// acquire counts one more connection of k, unless k has limit open: then it
// reports false and how many it has.
func (t *clientTable) acquire(k clientKey, limit int64) (int64, bool) {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := int64(sh.open[k])
	if n >= limit {
		return n, false
	}
	if sh.open == nil {
		sh.open = make(map[clientKey]int32)
	}
	sh.open[k] = int32(n + 1)
	return n + 1, true
}

// release counts one connection of k fewer.
func (t *clientTable) release(k clientKey) {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if n := sh.open[k]; n > 1 {
		sh.open[k] = n - 1
	} else {
		delete(sh.open, k)
	}
}

// clients returns how many clients have connections counted now.
func (t *clientTable) clients() int {
	var n int
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += len(sh.open)
		sh.mu.Unlock()
	}
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
// first (ties by client), and how many clients there are in all: those
// the per-client limit counts.
func (s *Server) TopClients(n int) (top []ClientCount, clients int) {
	type entry struct {
		k    clientKey
		open int32
	}
	var all []entry
	for i := range s.clients.shards {
		sh := &s.clients.shards[i]
		sh.mu.Lock()
		for k, open := range sh.open {
			all = append(all, entry{k, open})
		}
		sh.mu.Unlock()
	}
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
// while there was no limit are not counted.
func (s *Server) SetMaxPerClient(n int) { s.clients.limit.Store(int64(max(n, 0))) }

// MaxPerClient returns the per-client connection limit in force; 0: none.
func (s *Server) MaxPerClient() int { return int(s.clients.limit.Load()) }

// Clients returns the number of clients with connections counted by the
// per-client limit (0 while it has been off since the start).
func (s *Server) Clients() int { return s.clients.clients() }

// admitClient counts c against the per-client limit, once: a client already
// counted (a loop's handshake handed to a goroutine dials again) or exempt
// passes. At the limit it returns an error wrapping errClientLimit.
func (s *Server) admitClient(c *client) error {
	limit := s.clients.limit.Load()
	if c.counted || limit == 0 {
		return nil
	}
	ip := c.addr.Addr()
	if ip == c.peer.Addr() && s.trusted(ip) { // an upstream's own connection
		return nil
	}
	open, ok := s.clients.acquire(keyOf(ip), limit)
	if !ok {
		s.metrics.ClientLimit.Add(1)
		return fmt.Errorf("%w: %d open", errClientLimit, open)
	}
	c.counted = true
	return nil
}

// releaseClient undoes admitClient for a connection that was counted.
func (s *Server) releaseClient(counted bool, addr netip.AddrPort) {
	if counted {
		s.clients.release(keyOf(addr.Addr()))
	}
}
