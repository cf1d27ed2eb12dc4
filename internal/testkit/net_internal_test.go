package testkit

import "testing"

// FreePortBase never hands out a port twice (a listen and an admin
// address taken in a row must differ), even from a range of 9 ports.
func TestFreePortsNotTwice(t *testing.T) {
	handed.Lock()
	saved := handed.ports
	handed.ports = map[int]bool{} // this test's draws only, whatever ran before
	handed.Unlock()
	t.Cleanup(func() {
		handed.Lock()
		handed.ports = saved
		handed.Unlock()
	})
	seen := map[int]bool{}
	for range 8 {
		p := FreePortBase(t, 1, 31500, 31510)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
