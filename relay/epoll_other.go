//go:build !linux

package relay

import "errors"

// NewEpollEngine needs Linux (epoll, splice); elsewhere it returns an error
// and callers fall back to NewGoroutineEngine.
func NewEpollEngine(opts EpollOptions) (Engine, error) {
	return nil, errors.New("relay: the epoll engine needs linux")
}

// plainConn is the identity where Socket does not exist.
func plainConn(c Conn) Conn { return c }
