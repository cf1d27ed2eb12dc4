package balancer_test

import (
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/stickyd/stickyd/balancer"
)

// A proxy builds one table per configuration and keeps each backend's
// health next to it; Pick skips the backends that are down.
func Example() {
	backends := []balancer.Backend{
		{Name: "app-1:8080"},
		{Name: "app-2:8080"},
		{Name: "app-3:8080", Weight: 2}, // twice the clients
	}
	tab, err := balancer.New(backends, balancer.Options{})
	if err != nil {
		panic(err)
	}
	healthy := make([]atomic.Bool, tab.Len())
	for i := range healthy {
		healthy[i].Store(true)
	}
	usable := func(i int) bool { return healthy[i].Load() }

	client := netip.MustParseAddr("203.0.113.7")
	first := tab.Pick(client, usable)
	fmt.Println("first choice:", tab.Backend(first).Name)

	healthy[first].Store(false) // health check failed
	fmt.Println("while it is down:", tab.Backend(tab.Pick(client, usable)).Name)

	healthy[first].Store(true) // back: the client returns
	fmt.Println("after recovery:", tab.Backend(tab.Pick(client, usable)).Name)

	// The same client, as an IPv4-mapped IPv6 address, is the same key.
	mapped := netip.MustParseAddr("::ffff:203.0.113.7")
	fmt.Println("mapped:", tab.Backend(tab.Pick(mapped, usable)).Name)
	// Output:
	// first choice: app-3:8080
	// while it is down: app-1:8080
	// after recovery: app-3:8080
	// mapped: app-3:8080
}

// Prefix keys keep a whole network on one backend: here every IPv4 /24 and
// every IPv6 /64.
func ExampleParseKeyMode() {
	mode, err := balancer.ParseKeyMode("/24,/64")
	if err != nil {
		panic(err)
	}
	tab, err := balancer.New([]balancer.Backend{{Name: "a"}, {Name: "b"}, {Name: "c"}}, balancer.Options{Key: mode})
	if err != nil {
		panic(err)
	}
	for _, s := range []string{"192.0.2.1", "192.0.2.254", "2001:db8:0:1::1", "2001:db8:0:1:ffff::9"} {
		fmt.Println(s, "->", tab.Backend(tab.Pick(netip.MustParseAddr(s), nil)).Name)
	}
	fmt.Println(mode)
	// Output:
	// 192.0.2.1 -> a
	// 192.0.2.254 -> a
	// 2001:db8:0:1::1 -> c
	// 2001:db8:0:1:ffff::9 -> c
	// /24,/64
}

// Bounded load moves a client off its backend only while that backend
// holds more than its share times the factor.
func ExampleTable_PickBounded() {
	tab, err := balancer.New([]balancer.Backend{{Name: "a"}, {Name: "b"}}, balancer.Options{})
	if err != nil {
		panic(err)
	}
	client := netip.MustParseAddr("198.51.100.20")
	own := tab.Pick(client, nil)
	active := []int64{0, 0}
	active[own] = 10 // 10 of 10 connections on the client's own backend
	i := tab.PickBounded(client, nil, func(i int) int64 { return active[i] }, 10, 1.25)
	fmt.Println("own backend full, moved:", i != own)
	// Output:
	// own backend full, moved: true
}
