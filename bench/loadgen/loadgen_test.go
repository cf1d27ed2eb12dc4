package main

import (
	"bufio"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

func TestPercentile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"p50 of 1..100", ms(hundred...), 50, 50 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p100 of 1..100", ms(hundred...), 100, 100 * time.Millisecond},
		{"p50 of four", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"tiny p", ms(1, 2, 3), 0.001, 1 * time.Millisecond},
	}
	for _, tc := range tests {
		if got := percentile(tc.sorted, tc.p); got != tc.want {
			t.Errorf("%s: percentile(p%v) = %v, want %v", tc.name, tc.p, got, tc.want)
		}
	}
}

func TestMedian(t *testing.T) {
	vs := []float64{3, 1, 2}
	if got := median(vs); got != 2 {
		t.Errorf("median(3,1,2) = %v, want 2", got)
	}
	if vs[0] != 3 {
		t.Errorf("median modified its input: %v", vs)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median(4,1,3,2) = %v, want 2.5", got)
	}
}

func TestSourceIPsCycleSkippingPrefixAddress(t *testing.T) {
	s, err := parseSourceIPs("127.9.9.0/30")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 4 {
		got = append(got, s.Next().String())
	}
	want := "127.9.9.1 127.9.9.2 127.9.9.3 127.9.9.1"
	if strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
	if _, err := parseSourceIPs("::1/64"); err == nil {
		t.Error("IPv6 prefix accepted")
	}
}

// startBackend serves a backend on a fresh port until the test ends.
func startBackend(t *testing.T) (*backend, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{headerTimeout: time.Second, errLog: io.Discard}
	go b.serve(ln)
	t.Cleanup(func() { ln.Close() })
	return b, ln.Addr().String()
}

// dialWithHeader connects to addr and writes a PROXY header of the given
// version claiming src as the client.
func dialWithHeader(t *testing.T, addr string, version byte, src string) net.Conn {
	t.Helper()
	var h *pp.Header
	if version != 0 {
		srcAddr, _ := net.ResolveTCPAddr("tcp", src)
		h = pp.HeaderProxyFromAddrs(version, srcAddr, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8000})
	}
	return testkit.DialHeader(t, "tcp", addr, h)
}

func TestBackendReportsProxyHeader(t *testing.T) {
	b, addr := startBackend(t)
	for _, version := range []byte{1, 2} {
		c := dialWithHeader(t, addr, version, "127.1.2.3:40000")
		if _, err := c.Write([]byte{cmdAddr}); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("v%d: %v", version, err)
		}
		want := "v" + string('0'+rune(version)) + " 127.1.2.3:40000 127.0.0.1:8000\n"
		if line != want {
			t.Errorf("v%d: got %q, want %q", version, line, want)
		}
	}
	if b.v1.Load() != 1 || b.v2.Load() != 1 {
		t.Errorf("counted v1=%d v2=%d, want 1 and 1", b.v1.Load(), b.v2.Load())
	}
}

func TestBackendEchoSinkSource(t *testing.T) {
	_, addr := startBackend(t)

	c := dialWithHeader(t, addr, 2, "127.1.0.9:1234")
	msg, buf := echoMessage(64), make([]byte, 64)
	for range 2 {
		if err := roundTrip(c, msg, buf); err != nil {
			t.Fatalf("echo: %v", err)
		}
	}

	const n = 3*zeroFileSize + 17 // wraps around the memfd
	c = dialWithHeader(t, addr, 2, "127.1.0.9:1235")
	if err := upload(c.(*net.TCPConn), n); err != nil {
		t.Fatalf("sink: %v", err)
	}
	c = dialWithHeader(t, addr, 2, "127.1.0.9:1236")
	if err := download(c.(*net.TCPConn), n); err != nil {
		t.Fatalf("source: %v", err)
	}
	if extra, err := io.ReadAll(c); err != nil || len(extra) != 0 {
		t.Errorf("source sent %d extra bytes (err %v)", len(extra), err)
	}
}

func TestBackendRejectsMissingHeader(t *testing.T) {
	b, addr := startBackend(t)
	c := dialWithHeader(t, addr, 0, "")
	if err := roundTrip(c, echoMessage(64), make([]byte, 64)); err == nil {
		t.Fatal("echo worked without a PROXY header")
	}
	if got := b.headerErrs.Load(); got != 1 {
		t.Errorf("header errors = %d, want 1", got)
	}
}

func TestReportTable(t *testing.T) {
	raw := `proxy,rep,metric,value
stickyd,1,conns_per_s,200
stickyd,2,conns_per_s,100
stickyd,3,conns_per_s,300
haproxy,1,conns_per_s,100
stickyd,1,reached@1000,340
stickyd,1,rss_KB_per_conn@1000,5
haproxy,1,reached@1000,1000
haproxy,1,rss_KB_per_conn@1000,3.5
`
	s, err := readSamples(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	cols := []column{
		{head: "conn/s", metric: "conns_per_s"},
		{head: "RSS", metric: "rss_KB_per_conn@1000", digits: 2, level: 1000},
	}
	names := []string{"stickyd", "haproxy", "nginx"}
	pairs, err := parseRatios("", names)
	if err != nil {
		t.Fatal(err)
	}
	more, err := parseRatios("haproxy/stickyd", names)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseRatios("floor/nginx", names); err == nil {
		t.Error("a ratio naming a proxy not in the list was accepted")
	}
	got := renderTable(s, names, append(pairs, more...), cols)
	for _, want := range []string{
		"| stickyd | 200 | fail@340 |",
		"| haproxy | 100 | 3.50 |",
		"| nginx (not run) | – | – |",
		"| stickyd ÷ haproxy | 2.00x | 1.43x |",
		"| stickyd ÷ nginx | – | – |",
		"| haproxy ÷ stickyd | 0.50x | 0.70x |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	if got := idleProxies(s, names, []int{1000}); !slices.Equal(got, []string{"stickyd", "haproxy"}) {
		t.Errorf("idleProxies = %v, want the two with idle rows", got)
	}
	gp := renderPlotScript(s, []string{"stickyd", "haproxy"}, []int{1000}, "/r/mem")
	for _, want := range []string{"set output '/r/mem.png'", "title 'stickyd (failed at 340 connections)'", "using 1:3"} {
		if !strings.Contains(gp, want) {
			t.Errorf("plot script lacks %q:\n%s", want, gp)
		}
	}
}

func TestParseKB(t *testing.T) {
	in := "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t  4242 kB\n"
	if got := parseKB(bufio.NewScanner(strings.NewReader(in)), "VmRSS:"); got != 4242 {
		t.Errorf("VmRSS = %d, want 4242", got)
	}
	if got := parseKB(bufio.NewScanner(strings.NewReader(in)), "Pss:"); got != 0 {
		t.Errorf("missing key = %d, want 0", got)
	}
}

func TestReportLoadTableAndCPUPlot(t *testing.T) {
	raw := `proxy,rep,metric,value
stickyd,1,mix_p99_ms,10
haproxy,1,mix_p99_ms,20
stickyd,1,open_conns_per_s@1000,999
stickyd,1,open_cpu_us_per_conn@1000,90
stickyd,1,conns_per_s,9000
stickyd,1,cpu_us_per_conn,60
`
	s, err := readSamples(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"stickyd", "haproxy"}
	cols := loadColumns([]int{1000})
	if !hasData(s, names, cols) || hasData(samples{}, names, cols) {
		t.Error("hasLoad wrong")
	}
	got := renderTable(s, names, [][2]string{{"stickyd", "haproxy"}}, cols)
	for _, want := range []string{"open 1k/s CPU µs/conn", "| stickyd | – | – | 10.0 | – | – | 90 |", "| stickyd ÷ haproxy | – | – | 0.50x |"} {
		if !strings.Contains(got, want) {
			t.Errorf("load table lacks %q:\n%s", want, got)
		}
	}
	dat := renderCPUPlotData(s, names, []int{1000})
	if !strings.Contains(dat, "# stickyd\n999 90.00\n9000 60.00\n\n\n# haproxy\n\n\n") {
		t.Errorf("cpu plot data:\n%s", dat)
	}
	if gp := renderCPUPlotScript(names, "/r/cpu"); !strings.Contains(gp, "'/r/cpu.dat' index 1 using 1:2") {
		t.Errorf("cpu plot script:\n%s", gp)
	}
}

// chat opens its connections and exchanges messages on each until the
// run stops, through a plain echo server (no proxy).
func TestChatExchanges(t *testing.T) {
	var echo testkit.Tracked
	var echoed atomic.Int64
	echo.Serve(t, testkit.Listen(t, "127.0.0.1:0"), func(c net.Conn) {
		defer echo.Forget(c)
		defer c.Close()
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			echoed.Add(int64(n))
		}
	})
	src, err := parseSourceIPs("127.1.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	const n, size = 4, 64
	msg := echoMessage(size)
	conns, err := openChats(src, echo.Addr(), n, 0, msg, testkit.Guard)
	if err != nil {
		t.Fatal(err)
	}
	var phase atomic.Int32
	phase.Store(phaseMeasure)
	type result struct {
		trips int
		errs  int64
	}
	got := make(chan result, n)
	for _, c := range conns {
		go func() {
			lats, errs := chatWorker(&phase, c, msg, testkit.Guard)
			got <- result{len(lats), errs}
		}()
	}
	testkit.WaitFor(t, "a hundred messages echoed", func() bool { return echoed.Load() >= (n+100)*size })
	phase.Store(phaseStop)
	trips := 0
	for range n {
		r := testkit.Await(t, got, "a chat worker hangs")
		if r.errs != 0 {
			t.Errorf("a chat worker had %d errors", r.errs)
		}
		trips += r.trips
	}
	if trips == 0 {
		t.Error("no round trip measured")
	}
	for _, c := range conns {
		c.Close()
	}
}
