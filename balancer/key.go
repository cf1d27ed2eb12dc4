package balancer

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrKeyMode reports a key mode that ParseKeyMode or New rejects.
var ErrKeyMode = errors.New("balancer: invalid key mode")

// KeyMode selects which part of a client address is hashed. Clients whose
// keys are equal always get the same backend, so a prefix key keeps a whole
// NATed or rotating-address network on one backend. The zero value hashes the
// whole address, for IPv4 and IPv6 alike.
//
// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are always treated as IPv4.
type KeyMode struct {
	// V4Prefix, when in 1..31, hashes only the first V4Prefix bits of an
	// IPv4 address (24 puts 192.0.2.0/24 on one backend). 0 and 32 mean the
	// whole address.
	V4Prefix int
	// V6Prefix, when in 1..127, hashes only the first V6Prefix bits of an
	// IPv6 address (64 puts one customer /64 on one backend). 0 and 128 mean
	// the whole address.
	V6Prefix int
}

// ParseKeyMode parses a key mode as written in configuration:
//
//	""  or "ip"   whole address (the default)
//	"/24"         IPv4 /24 prefixes; IPv6 by whole address
//	"/24,/64"     IPv4 /24 and IPv6 /64 prefixes
//	"ip,/64"      whole IPv4 address; IPv6 /64 prefixes
//
// The first part applies to IPv4 (1..32 bits), the optional second part to
// IPv6 (1..128 bits). "/32" and "/128" are the same as "ip". Errors wrap
// ErrKeyMode. For every k it returns, ParseKeyMode(k.String()) returns k
// again.
func ParseKeyMode(s string) (KeyMode, error) {
	v4s, v6s, two := strings.Cut(s, ",")
	v4, err := parsePrefix(v4s, 32, !two)
	if err != nil {
		return KeyMode{}, fmt.Errorf("%w %q: IPv4 part: %w", ErrKeyMode, s, err)
	}
	var v6 int
	if two {
		v6, err = parsePrefix(v6s, 128, false)
		if err != nil {
			return KeyMode{}, fmt.Errorf("%w %q: IPv6 part: %w", ErrKeyMode, s, err)
		}
	}
	return KeyMode{V4Prefix: v4, V6Prefix: v6}, nil
}

// parsePrefix parses "ip" or "/N" with 1 <= N <= bits; full-length prefixes
// become 0 (whole address). The empty string is allowed only if emptyOK.
func parsePrefix(s string, bits int, emptyOK bool) (int, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "ip" || (s == "" && emptyOK):
		return 0, nil
	case !strings.HasPrefix(s, "/"):
		return 0, errors.New(`want "ip" or "/N"`)
	}
	n, err := strconv.Atoi(s[1:])
	if err != nil || n < 1 || n > bits || s[1] == '+' {
		return 0, fmt.Errorf("want a prefix length from 1 to %d", bits)
	}
	if n == bits {
		return 0, nil
	}
	return n, nil
}

// String returns k in the form ParseKeyMode accepts, e.g. "ip", "/24" or
// "/24,/64".
func (k KeyMode) String() string {
	v4, v6 := "ip", ""
	if k.V4Prefix != 0 {
		v4 = "/" + strconv.Itoa(k.V4Prefix)
	}
	if k.V6Prefix != 0 {
		v6 = ",/" + strconv.Itoa(k.V6Prefix)
	}
	return v4 + v6
}

// validate reports whether k's prefix lengths are in range.
func (k KeyMode) validate() error {
	if k.V4Prefix < 0 || k.V4Prefix > 32 || k.V6Prefix < 0 || k.V6Prefix > 128 {
		return fmt.Errorf("%w: V4Prefix %d (0..32), V6Prefix %d (0..128)", ErrKeyMode, k.V4Prefix, k.V6Prefix)
	}
	return nil
}

// masks returns the bit masks that keep the hashed part of an address.
func (k KeyMode) masks() (m4 uint32, m6hi, m6lo uint64) {
	m4 = ^uint32(0)
	if k.V4Prefix > 0 && k.V4Prefix < 32 {
		m4 <<= 32 - k.V4Prefix
	}
	m6hi, m6lo = ^uint64(0), ^uint64(0)
	switch p := k.V6Prefix; {
	case p > 0 && p <= 64:
		m6hi, m6lo = m6hi<<(64-p), 0
	case p > 64 && p < 128:
		m6lo <<= 128 - p
	}
	return m4, m6hi, m6lo
}
