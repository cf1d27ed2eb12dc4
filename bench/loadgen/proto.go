package main

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Commands: the first byte a client sends after the proxy's PROXY header.
const (
	// cmdEcho: the backend echoes every byte, the command byte included,
	// until the client half-closes.
	cmdEcho = 'E'
	// cmdAddr: the backend answers with one line describing the PROXY
	// header it received ("v2 127.1.2.3:40000 127.0.0.1:8000\n") and closes.
	cmdAddr = 'A'
	// cmdSink + 8-byte big-endian N: the backend reads N bytes, answers
	// ackByte and closes.
	cmdSink = 'S'
	// cmdSource + 8-byte big-endian N: the backend writes N bytes and closes.
	cmdSource = 'O'
)

// ackByte is the backend's answer once a sink has read all its bytes.
const ackByte = 'K'

// sizedCommand encodes cmd followed by n.
func sizedCommand(cmd byte, n int64) []byte {
	b := make([]byte, 9)
	b[0] = cmd
	binary.BigEndian.PutUint64(b[1:], uint64(n))
	return b
}

// readSize reads the 8-byte size that follows cmdSink and cmdSource.
func readSize(r io.Reader) (int64, error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("read size: %w", err)
	}
	n := binary.BigEndian.Uint64(b[:])
	if n > 1<<40 {
		return 0, fmt.Errorf("size %d too large", n)
	}
	return int64(n), nil
}
