package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	pp "github.com/pires/go-proxyproto"
)

// ErrChecksum: a v2 header's CRC32C TLV (type 0x03) does not match the
// header, or is not 4 bytes long.
var ErrChecksum = errors.New("proxyproto: PROXY v2 CRC32C checksum mismatch")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcOffset returns the offset of the 4-byte value of the first CRC32C TLV
// in the v2 header h, or -1 when it has none.
func crcOffset(h []byte) (int, error) {
	if len(h) < v2FixedLen || !bytes.HasPrefix(h, pp.SIGV2) {
		return -1, nil
	}
	i := v2FixedLen + addrBlockLen(h[13])
	for i+3 <= len(h) {
		typ, n := pp.PP2Type(h[i]), int(binary.BigEndian.Uint16(h[i+1:i+3]))
		if typ == pp.PP2_TYPE_CRC32C {
			if n != 4 || i+7 > len(h) {
				return -1, fmt.Errorf("%w: CRC32C TLV of %d bytes", ErrChecksum, n)
			}
			return i + 3, nil
		}
		i += 3 + n
	}
	return -1, nil
}

// checksum is the CRC32C of header h with the 4 bytes at off taken as 0.
func checksum(h []byte, off int) uint32 {
	c := crc32.Update(0, castagnoli, h[:off])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	return crc32.Update(c, castagnoli, h[off+4:])
}

// verifyChecksum checks a received v2 header's CRC32C TLV, if any.
func verifyChecksum(h []byte) error {
	off, err := crcOffset(h)
	if err != nil || off < 0 {
		return err
	}
	got, want := binary.BigEndian.Uint32(h[off:]), checksum(h, off)
	if got != want {
		return fmt.Errorf("%w: header says 0x%08x, its bytes give 0x%08x", ErrChecksum, got, want)
	}
	return nil
}

// sealChecksum writes into the v2 header h the CRC32C its CRC32C TLV, if
// any, must hold: a header re-encoded by stickyd (addresses normalised,
// padding dropped) needs a new one.
func sealChecksum(h []byte) error {
	off, err := crcOffset(h)
	if err != nil || off < 0 {
		return err
	}
	binary.BigEndian.PutUint32(h[off:], checksum(h, off))
	return nil
}

// addrBlockLen is the length of a v2 address block of the family byte fam.
func addrBlockLen(fam byte) int {
	switch fam >> 4 {
	case 1: // INET
		return 12
	case 2: // INET6
		return 36
	case 3: // UNIX
		return 216
	}
	return 0
}
