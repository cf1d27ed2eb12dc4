package server

import (
	"errors"
	"syscall"
)

// isTemporaryAccept reports accept errors that pass: out of descriptors or
// memory, or a connection aborted before it was accepted.
func isTemporaryAccept(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
