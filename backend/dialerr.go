package backend

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// dialErrors summarises the failed dials of one connection: a count per
// kind and the first error, not every error (a client facing 10000 dead
// backends must not make a 200 KB log line).
type dialErrors struct {
	n     int
	first error
	kinds map[string]int
	order []string // kinds in the order first seen
}

func (d *dialErrors) add(err error) {
	d.n++
	if d.first == nil {
		d.first = err
	}
	k := dialErrorKind(err)
	if d.kinds == nil {
		d.kinds = make(map[string]int, 2)
	}
	if d.kinds[k] == 0 {
		d.order = append(d.order, k)
	}
	d.kinds[k]++
}

// err returns the summary; it wraps ErrNoBackend when noBackend, and the
// first dial's error in every case.
func (d *dialErrors) err(noBackend bool) error {
	if d.n == 1 {
		if noBackend {
			return fmt.Errorf("%w: %w", ErrNoBackend, d.first)
		}
		return d.first
	}
	counts := make([]string, len(d.order))
	for i, k := range d.order {
		counts[i] = fmt.Sprintf("%d %s", d.kinds[k], k)
	}
	sum := fmt.Errorf("%d dials failed (%s); first: %w", d.n, strings.Join(counts, ", "), d.first)
	if noBackend {
		return fmt.Errorf("%w: %w", ErrNoBackend, sum)
	}
	return sum
}

func dialErrorKind(err error) string {
	var ne interface{ Timeout() bool }
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, syscall.ENOENT):
		return "no socket file"
	}
	return "other"
}

// dialFix is the fix a failed dial of b's address suggests, by its kind
// (dialErrorKind); "" when there is none to give.
func dialFix(err error, network, address string) string {
	switch dialErrorKind(err) {
	case "refused":
		return "nothing listens on " + address + ": start the backend, or correct its address"
	case "timeout":
		return "no answer from " + address + " within connect_timeout: check the address and any firewall between, or raise connect_timeout for a slow backend"
	case "unreachable":
		return "no route to " + address + ": check the address and the network"
	case "no socket file":
		return "no Unix socket at " + address + ": start the backend, or correct the path"
	}
	if network == "unix" && errors.Is(err, syscall.EACCES) {
		return "stickyd's user may not connect to " + address + ": give it write permission on the socket"
	}
	return ""
}
