package proxyproto

import (
	"io"
	"net"
	"net/netip"

	pp "github.com/pires/go-proxyproto"
)

// Write writes a PROXY header of the given version (1 or 2; 0 writes
// nothing) to w, announcing a TCP connection from src to dst. Mixed families
// are sent as IPv6 with the IPv4 side mapped. tlvs are included in a v2
// header only.
func Write(w io.Writer, version byte, src, dst netip.AddrPort, tlvs []pp.TLV) error {
	b, err := Format(version, src, dst, tlvs)
	if err == nil && len(b) > 0 {
		_, err = w.Write(b)
	}
	return err
}

// Format returns the header Write writes, for a caller that sends it along
// with other bytes (nil for version 0). A CRC32C TLV (0x03) among tlvs is
// given the checksum of the header built here (a forwarded one is stale). It builds the same header as
// pp.HeaderProxyFromAddrs (IPv4 when both ends are IPv4, else IPv6; LOCAL
// when an address is missing), but on the stack: go-proxyproto allocates
// only the returned bytes. It runs once per proxied connection.
func Format(version byte, src, dst netip.AddrPort, tlvs []pp.TLV) ([]byte, error) {
	if version == 0 {
		return nil, nil
	}
	h := pp.Header{Version: version, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}
	var sIP, dIP [16]byte
	var sa, da net.TCPAddr
	if src.Addr().IsValid() && dst.Addr().IsValid() {
		h.Command, h.TransportProtocol = pp.PROXY, pp.TCPv6
		sIP, dIP = src.Addr().As16(), dst.Addr().As16()
		sa.IP, da.IP = sIP[:], dIP[:]
		if src.Addr().Unmap().Is4() && dst.Addr().Unmap().Is4() {
			h.TransportProtocol = pp.TCPv4
			sa.IP, da.IP = sIP[12:], dIP[12:]
		}
		sa.Port, da.Port = int(src.Port()), int(dst.Port())
		h.SourceAddr, h.DestinationAddr = &sa, &da
	}
	if version == 2 && len(tlvs) > 0 {
		if err := h.SetTLVs(tlvs); err != nil {
			return nil, err
		}
		b, err := h.Format()
		if err == nil {
			err = sealChecksum(b)
		}
		return b, err
	}
	return h.Format()
}

// WriteLocal writes a v2 LOCAL header (used by health checks), or nothing
// for version 0. For v1 it writes "PROXY UNKNOWN".
func WriteLocal(w io.Writer, version byte) error {
	if version == 0 {
		return nil
	}
	h := &pp.Header{Version: version, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}
	_, err := h.WriteTo(w)
	return err
}
