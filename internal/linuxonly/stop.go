//go:build !linux

package linuxonly

// The compiler's error for this line is the message.
var _ int = "stickyd is Linux-only (epoll, splice, accept4, Pdeathsig): build with GOOS=linux"
