package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/stickyd/stickyd/admin"
	"github.com/stickyd/stickyd/config"
	"github.com/stickyd/stickyd/relay"
	"go.uber.org/zap"
)

// envAdminToken holds the admin token itself (config.AdminToken).
const envAdminToken = config.EnvAdminToken

// adminToken returns the admin token ("" for none) and whether it came
// from the environment. The variable is removed from the environment, so
// that launched workers do not inherit it (an upgrade passes it on).
func adminToken(cfg *config.Config) (token string, fromEnv bool, err error) {
	env := os.Getenv(envAdminToken)
	os.Unsetenv(envAdminToken)
	token, err = cfg.AdminToken(env)
	return token, env != "" && err == nil, err
}

// listenAdmin listens on addr: host:port, or unix:/path with permission
// perm (a stale socket file left by a dead process is replaced; a live
// one is an error). The socket file is left in place at exit, so that an
// upgraded process keeps serving on it.
func listenAdmin(addr string, perm os.FileMode) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return relay.ListenTCP(addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process serves on this socket", path)
		}
		os.Remove(path)
	}
	old := syscall.Umask(0o177) // no moment with looser permissions than 0600
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, perm); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// adminAccess is the admin API's access policy for listener ln.
func adminAccess(ln net.Listener, token string) admin.Access {
	return admin.Access{Token: token, LoopbackHost: adminOnLoopback(ln)}
}

// adminOnLoopback reports whether ln is a TCP listener on a loopback
// address (a Unix socket is not reachable from a browser at all).
func adminOnLoopback(ln net.Listener) bool {
	ta, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	return ok && ip.Unmap().IsLoopback()
}

// warnAdminExposure logs, once at start, an admin listener that others may
// reach with nothing to stop them draining every backend.
func warnAdminExposure(ln net.Listener, token string, log *zap.Logger) {
	if _, unix := ln.Addr().(*net.UnixAddr); unix || token != "" || adminOnLoopback(ln) {
		return
	}
	log.Warn("the admin API listens beyond loopback without a token: anyone who reaches it can drain every backend",
		zap.String("admin", ln.Addr().String()),
		zap.String("fix", "bind --admin to 127.0.0.1:PORT or unix:/path, or set --admin-token-file (or "+envAdminToken+")"))
}
