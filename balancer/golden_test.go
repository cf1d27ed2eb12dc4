package balancer

import (
	"net/netip"
	"strings"
	"testing"
)

// goldenBackends are the fixed backends of TestGolden, deliberately not in
// name order.
var goldenBackends = []Backend{
	{Name: "echo:80", Weight: 3},
	{Name: "alpha:80"},
	{Name: "delta:80", Weight: 1},
	{Name: "charlie:80", Weight: 2},
	{Name: "bravo:80"},
}

// goldenCases pins the mapping: if this test fails, every deployed client
// would move to another backend. Change the expectations only together
// with a deliberate, announced change of the algorithm.
var goldenCases = []struct {
	ip    string
	key   string // Options.Key
	order string // first three names of Order
}{
	{"0.0.0.0", "", "delta:80 bravo:80 echo:80"},
	{"1.2.3.4", "", "charlie:80 delta:80 echo:80"},
	{"::ffff:1.2.3.4", "", "charlie:80 delta:80 echo:80"},
	{"10.0.0.1", "", "echo:80 bravo:80 delta:80"},
	{"10.0.0.2", "", "bravo:80 echo:80 delta:80"},
	{"127.0.0.1", "", "echo:80 charlie:80 alpha:80"},
	{"192.0.2.1", "", "charlie:80 alpha:80 echo:80"},
	{"::ffff:192.0.2.1", "", "charlie:80 alpha:80 echo:80"},
	{"198.51.100.77", "", "bravo:80 alpha:80 charlie:80"},
	{"203.0.113.255", "", "bravo:80 charlie:80 echo:80"},
	{"255.255.255.255", "", "echo:80 alpha:80 charlie:80"},
	{"::", "", "bravo:80 echo:80 alpha:80"},
	{"::1", "", "charlie:80 delta:80 bravo:80"},
	{"2001:db8::1", "", "echo:80 bravo:80 alpha:80"},
	{"2001:db8::2", "", "echo:80 charlie:80 alpha:80"},
	{"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "", "bravo:80 charlie:80 echo:80"},
	{"fe80::1%eth0", "", "charlie:80 bravo:80 echo:80"},
	{"2606:4700:4700::1111", "", "delta:80 echo:80 charlie:80"},
	{"64:ff9b::c000:201", "", "bravo:80 alpha:80 delta:80"},
	{"invalid", "", "bravo:80 echo:80 alpha:80"},
	{"192.0.2.1", "/24,/64", "charlie:80 bravo:80 echo:80"},
	{"192.0.2.200", "/24,/64", "charlie:80 bravo:80 echo:80"},
	{"::ffff:192.0.2.99", "/24,/64", "charlie:80 bravo:80 echo:80"},
	{"2001:db8:1:2::1", "/24,/64", "echo:80 charlie:80 alpha:80"},
	{"2001:db8:1:2:ffff::", "/24,/64", "echo:80 charlie:80 alpha:80"},
}

func TestGolden(t *testing.T) {
	tables := map[string]*Table{}
	for _, tc := range goldenCases {
		tab := tables[tc.key]
		if tab == nil {
			mode, err := ParseKeyMode(tc.key)
			if err != nil {
				t.Fatal(err)
			}
			tab = mustNew(t, goldenBackends, Options{Key: mode})
			tables[tc.key] = tab
		}
		var ip netip.Addr
		if tc.ip != "invalid" {
			ip = netip.MustParseAddr(tc.ip)
		}
		if got := goldenOrder(tab, ip); got != tc.order {
			t.Errorf("%s (key %q): order %s, want %s", tc.ip, tc.key, got, tc.order)
		}
	}
}

// goldenOrder returns the first three names of ip's order, space-separated.
func goldenOrder(tab *Table, ip netip.Addr) string {
	var names []string
	for _, i := range tab.Order(ip, nil)[:3] {
		names = append(names, tab.Backend(i).Name)
	}
	return strings.Join(names, " ")
}

// TestGoldenTable pins the whole table through a digest of its slots.
func TestGoldenTable(t *testing.T) {
	tab := mustNew(t, goldenBackends, Options{})
	if got, want := tableDigest(tab), uint64(0xcd3f0ffb7cabb4af); got != want {
		t.Errorf("table digest %#x, want %#x", got, want)
	}
}

// tableDigest hashes a table's slots by backend name, so it does not
// depend on the order of the backends given to New.
func tableDigest(tab *Table) uint64 {
	h := uint64(len(tab.slots))
	for _, s := range tab.slots {
		name := "-"
		if s != empty {
			name = tab.Backend(int(s)).Name
		}
		h = mix(h ^ hashString(name, 0))
	}
	return h
}
