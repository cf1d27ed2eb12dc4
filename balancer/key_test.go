package balancer

import (
	"errors"
	"testing"
)

func TestParseKeyMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want KeyMode
		str  string
	}{
		{"", KeyMode{}, "ip"},
		{"ip", KeyMode{}, "ip"},
		{"/24", KeyMode{V4Prefix: 24}, "/24"},
		{"/32", KeyMode{}, "ip"},
		{"/1", KeyMode{V4Prefix: 1}, "/1"},
		{"/24,/64", KeyMode{V4Prefix: 24, V6Prefix: 64}, "/24,/64"},
		{" /16 , /48 ", KeyMode{V4Prefix: 16, V6Prefix: 48}, "/16,/48"},
		{"ip,/64", KeyMode{V6Prefix: 64}, "ip,/64"},
		{"/24,ip", KeyMode{V4Prefix: 24}, "/24"},
		{"ip,/128", KeyMode{}, "ip"},
		{"ip,/127", KeyMode{V6Prefix: 127}, "ip,/127"},
	} {
		got, err := ParseKeyMode(tc.in)
		if err != nil || got != tc.want || got.String() != tc.str {
			t.Errorf("ParseKeyMode(%q) = %+v (%q), %v; want %+v (%q)", tc.in, got, got.String(), err, tc.want, tc.str)
		}
	}
	for _, in := range []string{"/0", "/33", "/64", "24", "/+24", "/-1", "/", "ip,", ",/64", "ip,/0", "ip,/129", "/24,/64,/96", "port", "IP"} {
		if got, err := ParseKeyMode(in); !errors.Is(err, ErrKeyMode) {
			t.Errorf("ParseKeyMode(%q) = %+v, %v; want ErrKeyMode", in, got, err)
		}
	}
}

// FuzzParseKeyMode checks that every accepted mode is valid and survives a
// round trip through String.
func FuzzParseKeyMode(f *testing.F) {
	for _, s := range []string{"", "ip", "/24", "/24,/64", "ip,/56", "/33", "/24,", " /8 ,ip"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKeyMode(s)
		if err != nil {
			if !errors.Is(err, ErrKeyMode) {
				t.Fatalf("ParseKeyMode(%q): error %v does not wrap ErrKeyMode", s, err)
			}
			return
		}
		if err := k.validate(); err != nil {
			t.Fatalf("ParseKeyMode(%q) = %+v, invalid: %v", s, k, err)
		}
		again, err := ParseKeyMode(k.String())
		if err != nil || again != k {
			t.Fatalf("round trip %q -> %+v -> %q -> %+v, %v", s, k, k.String(), again, err)
		}
	})
}
