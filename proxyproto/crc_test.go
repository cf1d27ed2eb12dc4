package proxyproto

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net"
	"net/netip"
	"testing"

	pp "github.com/pires/go-proxyproto"
)

// upstreamWithCRC builds what an upstream may send: a TCP6 header with
// IPv4-mapped addresses, NOOP padding, and a CRC32C TLV (last), with the
// checksum computed here independently of crc.go; corrupt flips it.
func upstreamWithCRC(t *testing.T, corrupt bool) []byte {
	t.Helper()
	h := &pp.Header{Version: 2, Command: pp.PROXY, TransportProtocol: pp.TCPv6,
		SourceAddr:      &net.TCPAddr{IP: net.ParseIP("::ffff:198.51.100.7"), Port: 40000},
		DestinationAddr: &net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.5"), Port: 3000}}
	tlvs := []pp.TLV{{Type: 0xEA, Value: []byte("\x01vpce-0123")}, {Type: pp.PP2_TYPE_NOOP, Value: make([]byte, 7)},
		{Type: pp.PP2_TYPE_CRC32C, Value: make([]byte, 4)}}
	if err := h.SetTLVs(tlvs); err != nil {
		t.Fatal(err)
	}
	raw, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	sum := crc32.Checksum(raw, crc32.MakeTable(crc32.Castagnoli)) // the CRC field is 0 here
	if corrupt {
		sum ^= 1
	}
	binary.BigEndian.PutUint32(raw[len(raw)-4:], sum)
	return raw
}

// A received CRC32C is verified; a forwarded one is recomputed over the
// header stickyd sends (mapped TCP6 became TCP4, the NOOP padding shrank).
func TestChecksumVerifiedAndResealed(t *testing.T) {
	raw := upstreamWithCRC(t, false)
	h, err := Parse(raw)
	if err != nil {
		t.Fatalf("valid CRC32C refused: %v", err)
	}
	out, err := Format(2, h.Source, h.Destination, h.TLVs)
	if err != nil {
		t.Fatal(err)
	}
	if out[13] != 0x11 || len(out) == len(raw) {
		t.Fatalf("expected a re-encoded TCP4 header of another length, got family 0x%02x, %d vs %d bytes", out[13], len(out), len(raw))
	}
	off := len(out) - 4 // the CRC TLV stays last
	if pp.PP2Type(out[off-3]) != pp.PP2_TYPE_CRC32C {
		t.Fatalf("CRC32C TLV not last in %x", out)
	}
	zeroed := append([]byte(nil), out...)
	copy(zeroed[off:], []byte{0, 0, 0, 0})
	if got, want := binary.BigEndian.Uint32(out[off:]), crc32.Checksum(zeroed, crc32.MakeTable(crc32.Castagnoli)); got != want {
		t.Errorf("sent CRC32C 0x%08x, header's is 0x%08x", got, want)
	}
	h2, err := Parse(out)
	if err != nil || h2.Source != netip.MustParseAddrPort("198.51.100.7:40000") {
		t.Errorf("re-read of the sent header: %v %v", h2, err)
	}
}

func TestChecksumMismatchRefused(t *testing.T) {
	if _, err := Parse(upstreamWithCRC(t, true)); !errors.Is(err, ErrChecksum) {
		t.Errorf("wrong CRC32C: err %v, want ErrChecksum", err)
	}
	h := &pp.Header{Version: 2, Command: pp.PROXY, TransportProtocol: pp.TCPv4,
		SourceAddr:      &net.TCPAddr{IP: net.IPv4(1, 2, 3, 4), Port: 1},
		DestinationAddr: &net.TCPAddr{IP: net.IPv4(5, 6, 7, 8), Port: 2}}
	h.SetTLVs([]pp.TLV{{Type: pp.PP2_TYPE_CRC32C, Value: []byte{1, 2}}})
	raw, _ := h.Format()
	if _, err := Parse(raw); !errors.Is(err, ErrChecksum) {
		t.Errorf("2-byte CRC32C TLV: err %v, want ErrChecksum", err)
	}
}
