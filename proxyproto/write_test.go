package proxyproto

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	pp "github.com/pires/go-proxyproto"
)

// Format builds its header on the stack; it must write exactly what
// go-proxyproto's own constructor would.
func TestFormatMatchesLibrary(t *testing.T) {
	tlvs := []pp.TLV{{Type: pp.PP2_TYPE_AUTHORITY, Value: []byte("example.com")}}
	addrs := []struct{ src, dst string }{
		{"192.0.2.1:4242", "198.51.100.7:443"},
		{"[2001:db8::1]:4242", "[2001:db8::2]:443"},
		{"192.0.2.1:4242", "[2001:db8::2]:443"},    // mixed: sent as IPv6
		{"[2001:db8::1]:4242", "198.51.100.7:443"}, // mixed, the other way
		{"[::ffff:192.0.2.1]:1", "198.51.100.7:2"}, // mapped: sent as IPv4
		{"", "198.51.100.7:443"},                   // no source: LOCAL
	}
	for _, a := range addrs {
		var src, dst netip.AddrPort
		if a.src != "" {
			src = netip.MustParseAddrPort(a.src)
		}
		dst = netip.MustParseAddrPort(a.dst)
		for _, version := range []byte{1, 2} {
			for _, tl := range [][]pp.TLV{nil, tlvs} {
				got, err := Format(version, src, dst, tl)
				var srcAddr net.Addr = net.TCPAddrFromAddrPort(src)
				if !src.IsValid() {
					srcAddr = &net.TCPAddr{}
				}
				ref := pp.HeaderProxyFromAddrs(version, srcAddr, net.TCPAddrFromAddrPort(dst))
				if version == 2 && len(tl) > 0 {
					if err := ref.SetTLVs(tl); err != nil {
						t.Fatal(err)
					}
				}
				want, werr := ref.Format()
				if (err != nil) != (werr != nil) || !bytes.Equal(got, want) {
					t.Errorf("v%d %s -> %s, %d TLVs:\n got %q, %v\nwant %q, %v", version, a.src, a.dst, len(tl), got, err, want, werr)
				}
			}
		}
	}
}

// One allocation, the returned bytes: Format runs once per connection.
func TestFormatAllocations(t *testing.T) {
	src, dst := netip.MustParseAddrPort("192.0.2.1:4242"), netip.MustParseAddrPort("198.51.100.7:443")
	n := testing.AllocsPerRun(100, func() {
		if _, err := Format(2, src, dst, nil); err != nil {
			t.Fatal(err)
		}
	})
	if n > 1 {
		t.Errorf("Format allocates %.0f times, want 1", n)
	}
}
