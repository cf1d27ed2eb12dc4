package testkit

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// NotifySocket is a stand-in for systemd's end of $NOTIFY_SOCKET: a Unix
// datagram socket whose messages (KEY=VALUE lines, sd_notify(3)) arrive on
// Msgs as maps, in order.
type NotifySocket struct {
	Path string
	Msgs chan map[string]string
}

// ListenNotify listens on a NotifySocket in a directory of the test's,
// closed when the test ends.
func ListenNotify(t testing.TB) *NotifySocket {
	t.Helper()
	n := &NotifySocket{Path: filepath.Join(t.TempDir(), "notify.sock"), Msgs: make(chan map[string]string, 1024)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.Path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			m := map[string]string{}
			for _, line := range strings.Split(string(buf[:k]), "\n") {
				if key, v, ok := strings.Cut(line, "="); ok {
					m[key] = v
				}
			}
			n.Msgs <- m
		}
	}()
	return n
}
