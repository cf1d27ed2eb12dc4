package server

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unicode"
)

// trustIn returns a trusted-hop predicate for the given prefixes.
func trustIn(prefixes ...string) func(netip.Addr) bool {
	var ps []netip.Prefix
	for _, p := range prefixes {
		ps = append(ps, netip.MustParsePrefix(p))
	}
	return func(ip netip.Addr) bool {
		for _, p := range ps {
			if p.Contains(ip) {
				return true
			}
		}
		return false
	}
}

func request(headers ...string) []byte {
	return []byte("GET /chat HTTP/1.1\r\nHost: example.com\r\n" + strings.Join(headers, "\r\n") + "\r\n")
}

func TestClientIP(t *testing.T) {
	peer := netip.MustParseAddr("10.0.0.2")
	proxies := trustIn("10.0.0.0/8")
	onlyPeer := trustIn("10.0.0.2/32")
	tests := []struct {
		name    string
		block   []byte
		header  string
		trusted func(netip.Addr) bool
		want    string // "" means an error
	}{
		{"xff single", request("X-Forwarded-For: 203.0.113.9"), "X-Forwarded-For", proxies, "203.0.113.9"},
		{"xff right-most untrusted", request("X-Forwarded-For: 6.6.6.6, 203.0.113.9, 10.1.1.1, 10.2.2.2"), "X-Forwarded-For", proxies, "203.0.113.9"},
		{"xff nearest proxy only", request("X-Forwarded-For: 6.6.6.6, 203.0.113.9"), "X-Forwarded-For", onlyPeer, "203.0.113.9"},
		{"xff spoofed garbage on the left ignored", request("X-Forwarded-For: <script>, unknown, 6.6.6.6, 203.0.113.9"), "X-Forwarded-For", proxies, "203.0.113.9"},
		{"xff several lines form one chain", request("X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 203.0.113.9, 10.1.1.1"), "X-Forwarded-For", proxies, "203.0.113.9"},
		{"xff name case-insensitive", request("x-forwarded-for:203.0.113.9"), "X-Forwarded-For", proxies, "203.0.113.9"},
		{"xff with port", request("X-Forwarded-For: 203.0.113.9:51000"), "X-Forwarded-For", proxies, "203.0.113.9"},
		{"xff ipv6", request("X-Forwarded-For: 2001:db8::7"), "X-Forwarded-For", proxies, "2001:db8::7"},
		{"xff bracketed ipv6 with port", request("X-Forwarded-For: [2001:db8::7]:443"), "X-Forwarded-For", proxies, "2001:db8::7"},
		{"xff ipv4-mapped", request("X-Forwarded-For: ::ffff:198.51.100.7"), "X-Forwarded-For", proxies, "198.51.100.7"},
		{"xff ipv4-mapped trusted hop skipped", request("X-Forwarded-For: 198.51.100.7, ::ffff:10.9.9.9"), "X-Forwarded-For", proxies, "198.51.100.7"},
		{"xff zone dropped", request("X-Forwarded-For: fe80::1%eth0"), "X-Forwarded-For", proxies, "fe80::1"},
		{"xff all trusted: the farthest", request("X-Forwarded-For: 10.3.3.3, 10.1.1.1"), "X-Forwarded-For", proxies, "10.3.3.3"},
		{"xff empty elements skipped", request("X-Forwarded-For: 203.0.113.9,, ,"), "X-Forwarded-For", proxies, "203.0.113.9"},
		{"xff right-most untrusted is garbage", request("X-Forwarded-For: 203.0.113.9, unknown"), "X-Forwarded-For", proxies, ""},
		{"xff missing", request("X-Real-IP: 203.0.113.9"), "X-Forwarded-For", proxies, ""},
		{"xff empty", request("X-Forwarded-For: "), "X-Forwarded-For", proxies, ""},
		{"xff lookalike name", request("X-Forwarded-For-Not: 203.0.113.9"), "X-Forwarded-For", proxies, ""},
		{"request line not a header", []byte("GET http://x-forwarded-for:1.2.3.4/ HTTP/1.1\r\nHost: x\r\n"), "X-Forwarded-For", proxies, ""},
		{"x-real-ip", request("X-Real-IP: 203.0.113.9"), "X-Real-IP", proxies, "203.0.113.9"},
		{"forwarded quoted ipv6 with port", request(`Forwarded: for="[2001:db8::1]:4711"`), "Forwarded", proxies, "2001:db8::1"},
		{"forwarded params and chain", request(`Forwarded: for=6.6.6.6;proto=http, For=203.0.113.9;proto=https;by=10.0.0.2, for="10.1.1.1"`), "Forwarded", proxies, "203.0.113.9"},
		{"forwarded element without for skipped", request(`Forwarded: for=203.0.113.9, proto=https`), "Forwarded", proxies, "203.0.113.9"},
		{"forwarded unknown", request(`Forwarded: for=unknown`), "Forwarded", proxies, ""},
		{"forwarded obfuscated", request(`Forwarded: for=_hidden`), "Forwarded", proxies, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ClientIP(tc.block, tc.header, peer, tc.trusted)
			if tc.want == "" {
				if err == nil || !errors.Is(err, errNoClientIP) {
					t.Fatalf("got %v, %v; want an errNoClientIP error", got, err)
				}
				if strings.ContainsAny(err.Error(), "\r\n") {
					t.Errorf("error is not one line: %q", err)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("got %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

// An untrusted peer's header is ignored, whatever it says, even when absent.
func TestClientIPUntrustedPeer(t *testing.T) {
	peer := netip.MustParseAddr("198.51.100.1")
	for _, block := range [][]byte{request("X-Forwarded-For: 203.0.113.9"), request()} {
		got, err := ClientIP(block, "X-Forwarded-For", peer, trustIn("10.0.0.0/8"))
		if err != nil || got != peer {
			t.Errorf("ClientIP = %v, %v; want the peer", got, err)
		}
	}
}

// FuzzClientIP: ClientIP never panics; on success it returns the peer or an
// address written in the block (IPv4-mapped unmapped, zone dropped); on
// failure the error is errNoClientIP.
func FuzzClientIP(f *testing.F) {
	f.Add(request("X-Forwarded-For: 6.6.6.6, 203.0.113.9, 10.1.1.1"), uint8(0))
	f.Add(request("X-Forwarded-For: ::ffff:1.2.3.4", "x-forwarded-for: [fe80::1%eth0]:80"), uint8(0))
	f.Add(request("X-Real-IP: 2001:db8::1"), uint8(1))
	f.Add(request(`Forwarded: for="[2001:db8::1]:4711";proto=https, for=10.0.0.9`), uint8(2))
	f.Add([]byte("\r\nForwarded:for=\r\n"), uint8(2))
	names := []string{"X-Forwarded-For", "X-Real-IP", "Forwarded"}
	peer := netip.MustParseAddr("10.0.0.2")
	trusted := trustIn("10.0.0.0/8", "::1/128")
	f.Fuzz(func(t *testing.T, block []byte, which uint8) {
		got, err := ClientIP(block, names[int(which)%len(names)], peer, trusted)
		if err != nil {
			if !errors.Is(err, errNoClientIP) {
				t.Fatalf("error %v is not errNoClientIP", err)
			}
			return
		}
		if got == peer {
			return
		}
		if got.Is4In6() || got.Zone() != "" {
			t.Fatalf("result %v not normalised", got)
		}
		if !writtenIn(block, got) {
			t.Fatalf("result %v is not in the block %q", got, block)
		}
	})
}

// writtenIn reports whether ip is written in one of block's header values:
// some token between separators parses to it (zone and IPv4 mapping aside).
func writtenIn(block []byte, ip netip.Addr) bool {
	lines := strings.Split(string(block), "\r\n")
	for _, line := range lines[1:] {
		_, value, _ := strings.Cut(line, ":")
		tokens := strings.FieldsFunc(value, func(r rune) bool {
			return unicode.IsSpace(r) || strings.ContainsRune(`,;"=`, r)
		})
		for _, tok := range tokens {
			cands := []string{tok}
			if i := strings.IndexByte(tok, '%'); i >= 0 { // a zone may hold separators
				cands = append(cands, tok[:i], strings.TrimPrefix(tok[:i], "["))
			}
			for _, c := range cands {
				if a, err := parseHostAddr(c); err == nil && a.Unmap().WithZone("") == ip {
					return true
				}
			}
		}
	}
	return false
}
