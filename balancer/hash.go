package balancer

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// The hash functions below are fixed for all time: changing any constant
// changes every client's backend. They use only 64-bit integer operations and
// explicit byte orders, so the result is the same on every architecture
// (TestGolden pins it).

const (
	seedV4       = 0x243f6a8885a308d3 // IPv4 keys
	seedV6       = 0x13198a2e03707344 // IPv6 keys
	seedProbe    = 0x9e3779b97f4a7c15 // step between probe positions
	seedFallback = 0xa4093822299f31d0 // key side of the fallback order
	seedOffset   = 0x082efa98ec4e6c89 // Maglev permutation start
	seedSkip     = 0x452821e638d01377 // Maglev permutation step
	seedName     = 0xbe5466cf34e90c6c // backend side of the fallback order
)

// mix is the SplitMix64 finalizer: a bijection on uint64 with full avalanche.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// keyHash hashes the part of ip selected by the key masks. IPv4-mapped IPv6
// addresses are unmapped first, so ::ffff:192.0.2.1 and 192.0.2.1 are the
// same key. The zone is ignored; the zero Addr hashes like "::".
func (t *Table) keyHash(ip netip.Addr) uint64 {
	ip = ip.Unmap()
	if ip.Is4() {
		a := ip.As4()
		v := binary.BigEndian.Uint32(a[:]) & t.mask4
		return mix(mix(uint64(v) ^ seedV4))
	}
	var hi, lo uint64
	// AsSlice, unlike As16, keeps the halves in registers here (As16's
	// copy defeats store forwarding: 20 ns instead of 3).
	if a := ip.AsSlice(); len(a) == 16 {
		hi = binary.BigEndian.Uint64(a[:8]) & t.mask6hi
		lo = binary.BigEndian.Uint64(a[8:]) & t.mask6lo
	}
	return mix(mix(hi^seedV6) ^ lo)
}

// probeHash is the k-th independent hash of a key (k = 0 is the key hash).
func probeHash(h uint64, k int) uint64 {
	if k == 0 {
		return h
	}
	return mix(h + uint64(k)*seedProbe)
}

// reduce maps h uniformly onto [0, n) using its high bits.
func reduce(h, n uint64) uint64 {
	hi, _ := bits.Mul64(h, n)
	return hi
}

// hashString hashes a backend name with a seed, 8 bytes at a time in
// little-endian order.
func hashString(s string, seed uint64) uint64 {
	h := mix(seed ^ uint64(len(s))*0xff51afd7ed558ccd)
	for ; len(s) >= 8; s = s[8:] {
		h = mix(h ^ binary.LittleEndian.Uint64([]byte(s[:8])))
	}
	var tail uint64
	for i := 0; i < len(s); i++ {
		tail |= uint64(s[i]) << (8 * i)
	}
	return mix(h ^ tail)
}
