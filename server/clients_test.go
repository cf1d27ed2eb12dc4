package server

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
	"github.com/stickyd/stickyd/relay"
)

// A client is an IPv4 address (mapped or not) or an IPv6 /64.
func TestClientKey(t *testing.T) {
	same := [][2]string{
		{"192.0.2.1", "::ffff:192.0.2.1"},
		{"2001:db8::1", "2001:db8::ffff:2"},
		{"2001:db8::1", "2001:db8:0:0:1:2:3:4"},
		{"fe80::1%eth0", "fe80::2%eth1"},
	}
	for _, p := range same {
		if keyOf(netip.MustParseAddr(p[0])) != keyOf(netip.MustParseAddr(p[1])) {
			t.Errorf("%s and %s are different clients, want one", p[0], p[1])
		}
	}
	apart := [][2]string{
		{"192.0.2.1", "192.0.2.2"},
		{"2001:db8::1", "2001:db8:0:1::1"},
		{"0.0.0.1", "::1"},
	}
	for _, p := range apart {
		if keyOf(netip.MustParseAddr(p[0])) == keyOf(netip.MustParseAddr(p[1])) {
			t.Errorf("%s and %s are one client, want two", p[0], p[1])
		}
	}
}

// Concurrent acquires never let a client over the limit, and the table is
// empty once every connection is released.
func TestClientTableConcurrent(t *testing.T) {
	var tab clientTable
	const limit, clients, tries = 3, 50, 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := make(map[clientKey]int)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < tries*clients; i++ {
				k := keyOf(netip.AddrFrom4([4]byte{10, 0, byte(i % clients), 1}))
				if v, _ := tab.acquire(k, limit, 0, 0); v != clientAdmitted {
					continue
				}
				mu.Lock()
				open[k]++
				if open[k] > limit {
					t.Errorf("%v: %d open over the limit %d", k, open[k], limit)
				}
				mu.Unlock()
				mu.Lock()
				open[k]--
				mu.Unlock()
				tab.release(k, 0)
			}
		}()
	}
	wg.Wait()
	if n := tab.clients(); n != 0 {
		t.Errorf("%d clients left in the table after every release", n)
	}
}

// waitRefused waits for c to be closed without a greeting (a refused client).
func waitRefused(t *testing.T, c net.Conn, who string) {
	t.Helper()
	if got, _ := testkit.ReadAll(t, c); got != "" {
		t.Errorf("%s: a client over its limit got %q, want the connection closed", who, got)
	}
}

// from counts the backend's PROXY headers whose source address is ip.
func from(b *testkit.Backend, ip string) int {
	var n int
	for _, h := range b.Headers() {
		if ap, ok := h.SourceAddr.(*net.TCPAddr); ok && ap.AddrPort().Addr().Unmap().String() == ip {
			n++
		}
	}
	return n
}

// checkRefusalLogged waits for ip's refusal line and checks its cause, that
// its error has errPart and that its fix names the setting key.
func checkRefusalLogged(t *testing.T, r *rig, ip, cause, errPart, key string) {
	t.Helper()
	testkit.WaitFor(t, "refusal logged", func() bool { return len(r.refusals(ip)) > 0 })
	e := r.refusals(ip)[0].ContextMap()
	if e["cause"] != cause || !strings.Contains(fmt.Sprint(e["error"]), errPart) || !strings.Contains(fmt.Sprint(e["fix"]), key) {
		t.Errorf("refusal logged as %v, want cause %s, %q in the error, %s in the fix", e, cause, errPart, key)
	}
}

// servedFrom reports whether a connection from ip reaches backend b0 now.
func servedFrom(ip, addr string) bool {
	c, err := testkit.DialFrom(ip, addr)
	if err != nil {
		return false
	}
	defer c.Close()
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.HasPrefix(line, "b0 "+ip+":")
}

// A client with MaxPerClient connections open has the next refused before
// any backend is dialed, logged with the fix and counted; another client is
// served meanwhile, and the first is served again once one of its
// connections has closed.
func TestMaxPerClient(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newEngine func() (relay.Engine, error)) {
		b := startBackend(t, "b0")
		r := startServer(t, Options{MaxPerClient: 2, SniffWait: 10 * time.Millisecond}, newEngine, b)
		first := testkit.Dial(t, "127.0.3.1", r.addr)
		testkit.Greeting(t, first)
		second := testkit.Dial(t, "127.0.3.1", r.addr)
		testkit.Greeting(t, second)

		waitRefused(t, testkit.Dial(t, "127.0.3.1", r.addr), "third")
		checkRefusalLogged(t, r, "127.0.3.1", "client_limit", "2 open", "max_connections_per_client")
		if n := from(b, "127.0.3.1"); n != 2 {
			t.Errorf("the backend saw %d connections of 127.0.3.1, want 2 (none for the refused one)", n)
		}
		if n := r.srv.Metrics().ClientLimit.Load(); n != 1 {
			t.Errorf("ClientLimit = %d, want 1", n)
		}

		other := testkit.Dial(t, "127.0.3.2", r.addr)
		if name, _, _ := testkit.Greeting(t, other); name != "b0" {
			t.Errorf("another client got %q", name)
		}
		if n := r.srv.Clients(); n != 2 {
			t.Errorf("Clients() = %d, want 2", n)
		}

		first.Close()
		testkit.WaitFor(t, "the closed connection released", func() bool { return servedFrom("127.0.3.1", r.addr) })
		second.Close()
		other.Close()
		testkit.WaitFor(t, "the table emptied", func() bool { return r.srv.Clients() == 0 })
	})
}

// Behind a trusted upstream the client is the one its PROXY header names:
// IPv6 clients by /64; the upstream's own LOCAL connections (health checks)
// are not counted.
func TestMaxPerClientProxyHeaders(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newEngine func() (relay.Engine, error)) {
		b := startBackend(t, "b0")
		r := startServer(t, Options{Trusted: local, MaxPerClient: 2}, newEngine, b)
		dial := func(src string) net.Conn {
			c := testkit.Dial(t, "127.0.0.1", r.addr)
			if src == "" {
				c.Write(localV2(t))
			} else {
				c.Write(v2(t, src, "10.0.0.1:443"))
			}
			return c
		}
		for _, src := range []string{"203.0.113.7:1", "203.0.113.7:2", "[2001:db8::1]:1", "[2001:db8::2]:1"} {
			if _, got, _ := testkit.Greeting(t, dial(src)); got.String() != src {
				t.Errorf("backend told %s, want %s", got, src)
			}
		}
		waitRefused(t, dial("203.0.113.7:3"), "203.0.113.7")
		waitRefused(t, dial("[2001:db8::ffff]:1"), "2001:db8::ffff, in the /64 of two")
		if _, got, _ := testkit.Greeting(t, dial("[2001:db8:0:1::1]:1")); got.String() != "[2001:db8:0:1::1]:1" {
			t.Errorf("a client of another /64 was told %s", got)
		}
		for i := 0; i < 4; i++ { // the upstream's own: never counted
			if name, _, _ := testkit.Greeting(t, dial("")); name != "b0" {
				t.Errorf("LOCAL connection %d got %q", i, name)
			}
		}
		if n := r.srv.Metrics().ClientLimit.Load(); n != 2 {
			t.Errorf("ClientLimit = %d, want 2", n)
		}
	})
}

// localV2 is a PROXY v2 LOCAL header (a load balancer's health check).
func localV2(t *testing.T) []byte {
	t.Helper()
	raw, err := (&pp.Header{Version: 2, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}).Format()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// In HTTP header mode the client over its limit is answered 429, which
// the proxy in front passes on to it.
func TestMaxPerClientHTTP(t *testing.T) {
	b := startBackend(t, "b0")
	r := startServer(t, Options{ClientIPHeader: "X-Forwarded-For", Trusted: local, MaxPerClient: 1}, nil, b)
	req := "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 198.51.100.4\r\n\r\n"
	held := testkit.Dial(t, "127.0.0.1", r.addr)
	held.Write([]byte(req))
	if _, got, _ := testkit.Greeting(t, held); got.Addr().String() != "198.51.100.4" {
		t.Fatalf("backend told %s", got)
	}
	over := testkit.Dial(t, "127.0.0.1", r.addr)
	over.Write([]byte(req))
	got, _ := testkit.ReadAll(t, over)
	if !strings.HasPrefix(got, "HTTP/1.1 429 Too Many Requests\r\n") || !strings.Contains(got, "198.51.100.4") {
		t.Errorf("the client over its limit got %q, want a 429 naming it", got)
	}
	other := testkit.Dial(t, "127.0.0.1", r.addr)
	other.Write([]byte("GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 198.51.100.5\r\n\r\n"))
	if name, _, _ := testkit.Greeting(t, other); name != "b0" {
		t.Errorf("another client behind the same proxy got %q", name)
	}
}

// SetMaxPerClient (a reload) applies to new connections: a lower limit
// refuses the next one and closes none, 0 lifts it.
func TestSetMaxPerClient(t *testing.T) {
	b := startBackend(t, "b0")
	r := startServer(t, Options{MaxPerClient: 3, SniffWait: 10 * time.Millisecond}, twoLoops, b)
	var open []net.Conn
	for i := 0; i < 2; i++ {
		c := testkit.Dial(t, "127.0.3.9", r.addr)
		testkit.Greeting(t, c)
		open = append(open, c)
	}
	r.srv.SetMaxPerClient(1)
	waitRefused(t, testkit.Dial(t, "127.0.3.9", r.addr), "under the lowered limit")
	for i, c := range open { // still relayed
		fmt.Fprintf(c, "ping %d\n", i)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != fmt.Sprintf("ping %d\n", i) {
			t.Errorf("open connection %d after the limit was lowered: %q, %v", i, line, err)
		}
	}
	r.srv.SetMaxPerClient(0)
	c := testkit.Dial(t, "127.0.3.9", r.addr)
	if name, _, _ := testkit.Greeting(t, c); name != "b0" {
		t.Errorf("with the limit lifted: %q", name)
	}
}

// The limits' cost per connection: one acquire and one release, from
// parallel loops, 10k clients; with the rate limit, a clock read too.
func BenchmarkClientTable(b *testing.B) {
	for _, rate := range []int64{0, 1000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			var tab clientTable
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					k := keyOf(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8 % 40), byte(i)}))
					var ms int64
					if rate > 0 {
						ms = time.Now().UnixMilli()
					}
					tab.acquire(k, 100, rate, ms)
					tab.release(k, ms)
				}
			})
		})
	}
}

// TopClients lists the clients with the most connections open, most first,
// IPv6 clients as their /64.
func TestTopClients(t *testing.T) {
	var s Server
	add := func(ip string, n int) {
		for range n {
			if v, _ := s.clients.acquire(keyOf(netip.MustParseAddr(ip)), 100, 0, 0); v != clientAdmitted {
				t.Fatal("refused under the limit")
			}
		}
	}
	add("192.0.2.9", 2)
	add("2001:db8:0:1::5", 3)
	add("2001:db8:0:1::6", 2) // the same /64
	add("198.51.100.1", 7)
	add("192.0.2.1", 2)
	top, n := s.TopClients(3)
	want := []ClientCount{{"198.51.100.1", 7}, {"2001:db8:0:1::/64", 5}, {"192.0.2.1", 2}}
	if n != 4 || fmt.Sprint(top) != fmt.Sprint(want) {
		t.Errorf("TopClients(3) = %v, %d; want %v, 4", top, n, want)
	}
	if all, _ := s.TopClients(100); len(all) != 4 {
		t.Errorf("TopClients(100) has %d clients, want 4", len(all))
	}
}

// The rate is over a sliding second: the attempts of the current second,
// plus the share of the previous one the sliding second still covers. An
// attempt refused counts too; a client is forgotten two seconds after its
// last connection, and its entry swept once the shard has doubled.
func TestClientRate(t *testing.T) {
	var tab clientTable
	k := keyOf(netip.MustParseAddr("192.0.2.7"))
	const rate = 4
	at := func(ms int64) (int, int64) {
		v, n := tab.acquire(k, 0, rate, ms)
		if v == clientAdmitted {
			tab.release(k, ms)
		}
		return v, n
	}
	base := int64(1_700_000_000_000) // a second's start
	for i := range int64(rate) {
		if v, n := at(base + 10*i); v != clientAdmitted {
			t.Fatalf("attempt %d refused (%d)", i, n)
		}
	}
	if v, n := at(base + 100); v != clientOverRate || n != rate {
		t.Errorf("the 5th in 100 ms: verdict %d, rate %d; want refused at %d", v, n, rate)
	}
	// In the next second the previous one's 5 attempts (4 admitted, 1
	// refused) count for the share of it the sliding second covers,
	// rounded up, and each attempt adds one.
	for _, tc := range []struct {
		ms      int64
		verdict int
		rate    int64
	}{
		{1250, clientOverRate, 4}, // ceil(5 x 0.75) + 0
		{1500, clientOverRate, 4}, // ceil(5 x 0.5) + 1
		{1800, clientAdmitted, 3}, // ceil(5 x 0.2) + 2
		{1810, clientOverRate, 4}, // ceil(5 x 0.19) + 3
		{2999, clientAdmitted, 0}, // ceil(4 x 0.001) + 0: the attempts of 1.8 s are a second old
	} {
		// (An admitted attempt's count is its open connections: 1.)
		if v, n := at(base + tc.ms); v != tc.verdict || v == clientOverRate && n != tc.rate {
			t.Errorf("at %d ms: verdict %d, rate %d; want %d, %d", tc.ms, v, n, tc.verdict, tc.rate)
		}
	}
	if v, _ := at(base + 4000); v != clientAdmitted {
		t.Errorf("two quiet seconds later: verdict %d, want admitted", v)
	}

	// Stale entries go at the next sweep, due when a shard has doubled
	// (here: at once).
	for i := range 2000 {
		kk := keyOf(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
		tab.acquire(kk, 0, rate, base)
		tab.release(kk, base)
	}
	entries := func() (n int) {
		for i := range tab.shards {
			n += len(tab.shards[i].m)
		}
		return n
	}
	if n := entries(); n < 2000 {
		t.Fatalf("%d entries for 2000 clients of the last second, want them remembered", n)
	}
	for i := range tab.shards {
		tab.shards[i].sweepAt = 1
	}
	for i := range 2000 { // two seconds on, other clients, connections kept open
		kk := keyOf(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}))
		tab.acquire(kk, 0, rate, base+10_000)
	}
	if n := entries(); n != 2000 {
		t.Errorf("%d entries after the sweeps, want the 2000 open ones", n)
	}
	if n := tab.clients(); n != 2000 {
		t.Errorf("clients() = %d, want the 2000 with connections open", n)
	}
}

// A client that opens MaxRatePerClient connections within a second has the
// next refused before any dial, logged and counted, while another client is
// served; once its rate falls it is served again.
func TestMaxRatePerClient(t *testing.T) {
	forEachEngine(t, func(t *testing.T, newEngine func() (relay.Engine, error)) {
		b := startBackend(t, "b0")
		r := startServer(t, Options{MaxRatePerClient: 5, SniffWait: 10 * time.Millisecond}, newEngine, b)
		for i := range 5 { // each closed at once: the rate counts openings
			c := testkit.Dial(t, "127.0.4.1", r.addr)
			if name, _, _ := testkit.Greeting(t, c); name != "b0" {
				t.Fatalf("connection %d: %q", i, name)
			}
			c.Close()
		}
		waitRefused(t, testkit.Dial(t, "127.0.4.1", r.addr), "the sixth in a second")
		checkRefusalLogged(t, r, "127.0.4.1", "client_rate", "in the last second", "max_connection_rate_per_client")
		if n := from(b, "127.0.4.1"); n != 5 {
			t.Errorf("the backend saw %d connections of 127.0.4.1, want 5", n)
		}
		if name, _, _ := testkit.Greeting(t, testkit.Dial(t, "127.0.4.2", r.addr)); name != "b0" {
			t.Errorf("another client got %q", name)
		}
		testkit.WaitFor(t, "the client served again once its rate fell", func() bool { return servedFrom("127.0.4.1", r.addr) },
			testkit.Every(300*time.Millisecond))
		if n := r.srv.Metrics().ClientRate.Load(); n < 1 {
			t.Errorf("ClientRate = %d, want at least 1", n)
		}
	})
}
