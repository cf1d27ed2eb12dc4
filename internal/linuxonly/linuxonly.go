// Package linuxonly stops the build of stickyd for any OS but Linux with one
// clear message. stickyd is Linux-only: its relay engine is built on epoll,
// splice(2) and accept4(2), and the workers it launches die with it through
// Pdeathsig. The packages that reach those (relay, backend, internal/testkit,
// bench/loadgen) import this one, so that on another OS the build fails here,
// once, instead of at a dozen undefined names:
//
//	import _ "github.com/stickyd/stickyd/internal/linuxonly" // stickyd is Linux-only
//
// On Linux the package is empty.
package linuxonly
