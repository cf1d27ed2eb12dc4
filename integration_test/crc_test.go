package integration_test

// --forward-tlvs with a PROXY v2 CRC32C TLV (issue 11 item 8): between a
// real HAProxy that adds the checksum (send-proxy-v2 proxy-v2-options crc32c) and a
// real HAProxy that checks it (bind ... accept-proxy).

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"slices"
	"strings"
	"testing"

	pp "github.com/pires/go-proxyproto"
	"github.com/stickyd/stickyd/internal/testkit"
)

// crcHeader is what an upstream may send: IPv4-mapped TCP6 addresses, NOOP
// padding, an AWS-style TLV and a CRC32C TLV, checksummed (or not, when
// corrupt) by the test itself.
func crcHeader(t *testing.T, corrupt bool) []byte {
	t.Helper()
	h := &pp.Header{Version: 2, Command: pp.PROXY, TransportProtocol: pp.TCPv6,
		SourceAddr:      &net.TCPAddr{IP: net.ParseIP("::ffff:198.51.100.7"), Port: 40000},
		DestinationAddr: &net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.5"), Port: 3000}}
	h.SetTLVs([]pp.TLV{{Type: 0xEA, Value: []byte("\x01vpce-0123")}, {Type: pp.PP2_TYPE_NOOP, Value: make([]byte, 9)},
		{Type: pp.PP2_TYPE_CRC32C, Value: make([]byte, 4)}})
	raw, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	sum := crc32.Checksum(raw, crc32.MakeTable(crc32.Castagnoli))
	if corrupt {
		sum++
	}
	binary.BigEndian.PutUint32(raw[len(raw)-4:], sum)
	return raw
}

func TestForwardedCRC32CThroughHAProxy(t *testing.T) {
	b := testkit.StartBackend(t, "b1")
	checker := startHAProxyListen(t, "accept-proxy", b.Addr(), "send-proxy-v2") // resets on a bad CRC32C
	p := startStickyd(t, "--backend", "h="+checker, "--accept-proxy", "127.0.0.0/8", "--forward-tlvs")

	t.Run("HAProxy proxy-v2-options crc32c upstream", func(t *testing.T) {
		// The upstream does send the TLV: seen first by a bare listener.
		probe := testkit.Listen(t, "127.0.0.1:0")
		defer probe.Close()
		got := make(chan []pp.TLV, 1)
		go func() {
			c, err := probe.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			h, err := pp.Read(bufio.NewReader(c))
			var tlvs []pp.TLV
			if err == nil {
				tlvs, _ = h.TLVs()
			}
			got <- tlvs
		}()
		c := testkit.Dial(t, "", startHAProxyListen(t, "", probe.Addr().String(), "send-proxy-v2 proxy-v2-options crc32c"))
		if tlvs := testkit.Await(t, got, "HAProxy sent no header"); !slices.ContainsFunc(tlvs, func(v pp.TLV) bool { return v.Type == pp.PP2_TYPE_CRC32C }) {
			t.Fatalf("HAProxy sent no CRC32C TLV: %v", tlvs)
		}
		c.Close()
		front := startHAProxyListen(t, "", p.addr, "send-proxy-v2 proxy-v2-options crc32c")
		for i := 0; i < 3; i++ {
			ip := testkit.ClientIP(7000 + i)
			name, client, _ := testkit.Greeting(t, testkit.Dial(t, ip, front))
			if name != "b1" || client.Addr().String() != ip {
				t.Errorf("client %s: greeted by %s as %v", ip, name, client)
			}
		}
	})
	t.Run("re-encoded header gets a new checksum", func(t *testing.T) {
		c := testkit.Dial(t, "127.0.0.1", p.addr)
		c.Write(crcHeader(t, false))
		name, client, _ := testkit.Greeting(t, c)
		if name != "b1" || client.String() != "198.51.100.7:40000" {
			t.Errorf("greeted by %s as %v, want b1 as 198.51.100.7:40000", name, client)
		}
	})
	t.Run("wrong checksum refused and logged", func(t *testing.T) {
		ip := testkit.ClientIP(7100)
		c := testkit.Dial(t, ip, p.addr)
		c.Write(crcHeader(t, true))
		buf := make([]byte, 64)
		if n, err := c.Read(buf); err == nil {
			t.Fatalf("a header with a wrong CRC32C was relayed: %q", buf[:n])
		}
		testkit.WaitFor(t, "the refusal logged", func() bool {
			for _, m := range logsOf[map[string]any](p, "connection refused") {
				if strings.HasPrefix(fmt.Sprint(m["peer"]), ip+":") && strings.Contains(fmt.Sprint(m["error"]), "CRC32C checksum mismatch") {
					return true
				}
			}
			return false
		})
	})
}
