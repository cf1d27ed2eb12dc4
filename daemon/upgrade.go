package daemon

import (
	"errors"
	"net"
	"os"

	"github.com/stickyd/stickyd/relay"
	"github.com/stickyd/stickyd/upgrade"
)

// Zero-downtime upgrade (SIGUSR2): the upgrader (package upgrade) starts a
// new copy of the binary with the proxy's and the admin API's listening
// sockets. Once the new process is ready, this one stops accepting,
// drains its connections (drain_timeout) and exits 0. With [workers] an
// upgrade is refused: the new process would have to start its workers on
// the ports the old workers hold; restart instead.

// listenerNames are the sockets an upgrade hands over.
const (
	proxyListener = "listen"
	adminListener = "admin"
)

// errUpgradeWorkers is returned by upgrade with [workers].
var errUpgradeWorkers = errors.New("upgrade with [workers] is not supported (their ports are taken): restart instead")

// newUpgrader adopts what a parent passed, if this process was started by
// an upgrade.
func newUpgrader(d *daemon) (*upgrade.Upgrader, error) {
	return upgrade.New(upgrade.Options{Names: []string{proxyListener, adminListener}, Log: d.log})
}

// upgrade starts the new process and returns nil once it serves. On error
// the new process has been killed and this one is unchanged.
func (d *daemon) upgrade() error {
	if d.sup != nil {
		return errUpgradeWorkers
	}
	var env []string
	if d.adminTokenEnv != "" { // taken out of this process's environment at start
		env = append(env, envAdminToken+"="+d.adminTokenEnv)
	}
	var group []net.Listener // the loops' sockets of d.ln's SO_REUSEPORT group
	for _, ln := range d.srv.Listeners() {
		if ln != d.ln {
			group = append(group, ln)
		}
	}
	return d.up.Upgrade([]upgrade.Listener{{Name: proxyListener, Listener: d.ln, Group: group},
		{Name: adminListener, Listener: d.adminLn}}, env)
}

// proxyListen returns the inherited listening socket, or a new one on addr.
func (d *daemon) proxyListen(addr string) (net.Listener, error) {
	if ln := d.up.Inherited(proxyListener); ln != nil {
		d.inherited = true
		d.lnGroup = d.up.InheritedGroup(proxyListener)
		return ln, nil
	}
	return relay.ListenTCP(addr)
}

// adminListen returns the inherited admin socket or a new one on addr
// (listenAdmin; perm for a Unix socket); nil when addr is "" (an
// inherited one is closed).
func (d *daemon) adminListen(addr string, perm os.FileMode) (net.Listener, error) {
	if ln := d.up.Inherited(adminListener); ln != nil {
		if addr == "" {
			ln.Close()
			return nil, nil
		}
		return ln, nil
	}
	if addr == "" {
		return nil, nil
	}
	return listenAdmin(addr, perm)
}
