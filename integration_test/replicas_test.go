package integration_test

// Scale-out: replicas with the same backends agree.

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stickyd/stickyd/internal/testkit"
)

// opsRunLookup runs `stickyd lookup args` for testkit.ClientIP(0..n-1) on stdin and
// returns the backend name per IP.
func opsRunLookup(t *testing.T, args []string, n int) []string {
	t.Helper()
	var in strings.Builder
	for i := range n {
		in.WriteString(testkit.ClientIP(i) + "\n")
	}
	cmd := exec.Command(stickydBin, append([]string{"lookup"}, args...)...)
	cmd.Dir = t.TempDir()
	cmd.Stdin = strings.NewReader(in.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("stickyd lookup: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != n {
		t.Fatalf("lookup printed %d lines, want %d", len(lines), n)
	}
	names := make([]string, n)
	for i, l := range lines {
		ip, name, _ := strings.Cut(l, " ")
		if ip != testkit.ClientIP(i) {
			t.Fatalf("lookup line %d: %q", i, l)
		}
		names[i] = name
	}
	return names
}

// Two replicas given the same backends in different orders send each of
// 1000 client IPs to the same backend, and `stickyd lookup` agrees.
func TestReplicasAgree(t *testing.T) {
	bs, args := fourBackends(t)
	var shuffled []string
	for _, i := range []int{2, 0, 3, 1} {
		shuffled = append(shuffled, "--backend", bs[i].Flag())
	}
	p1, p2 := startStickyd(t, args...), startStickyd(t, shuffled...)
	const clients = 1000
	n1, n2 := make([]string, clients), make([]string, clients)
	helloAll(t, p1.addr, n1)
	helloAll(t, p2.addr, n2)
	for i := range clients {
		if n1[i] != n2[i] {
			t.Fatalf("client %s: replica 1 sent it to %s, replica 2 to %s", testkit.ClientIP(i), n1[i], n2[i])
		}
	}
	l1, l2 := opsRunLookup(t, args, clients), opsRunLookup(t, shuffled, clients)
	if !slices.Equal(l1, l2) {
		t.Fatal("stickyd lookup differs between the two orders")
	}
	if !slices.Equal(l1, n1) {
		t.Fatal("stickyd lookup differs from where connections went")
	}
}
