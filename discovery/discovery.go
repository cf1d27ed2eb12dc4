// Package discovery finds backends in DNS: a name with a port ("every A
// and AAAA address of the name, on this port") or an SRV name
// ("_service._proto.name": every target, on its port). A Watcher resolves
// the names again on an interval, so that stickyd follows a Kubernetes
// headless Service as it scales. Each address found becomes a backend
// named by its "ip:port", the same on every replica.
//
//	r := discovery.NewResolver("") // the system resolver; or "10.96.0.10:53"
//	addrs, err := r.Resolve(ctx, "app.default.svc.cluster.local:3000")
//	// addrs: ["10.1.0.7:3000", "10.1.3.2:3000"], sorted
//	w := &discovery.Watcher{Resolver: r, Targets: targets, Interval: 10 * time.Second, Log: log}
//	go w.Run(ctx, first, func(answers map[string][]string) { /* rebuild the backend set */ })
//
// A name that fails to resolve (timeout, NXDOMAIN, no records) keeps its
// last answer: a DNS outage never empties the backend set; health checks
// and dial failures take care of addresses that went away meanwhile.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Fix is the fix logged with a dns backend that does not resolve.
const Fix = "check the name (a typo, or a Service or SRV record not created yet) and the resolver " +
	"(--dns-server; by default the system's); stickyd resolves it again every dns_interval"

// ErrNoAddresses is returned by Resolve when a name has no usable address.
var ErrNoAddresses = errors.New("discovery: no addresses")

// DefaultTimeout bounds one Resolve.
const DefaultTimeout = 5 * time.Second

// Resolver resolves DNS backend targets. It is safe for concurrent use.
type Resolver struct {
	r       *net.Resolver
	timeout time.Duration
}

// NewResolver returns a resolver that asks server (host:port, UDP with TCP
// fallback) or, when server is "", the system's resolvers (/etc/resolv.conf,
// search domains and /etc/hosts included).
func NewResolver(server string) *Resolver {
	r := &Resolver{r: net.DefaultResolver, timeout: DefaultTimeout}
	if server != "" {
		r.r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}}
	}
	return r
}

// IsSRV reports whether target is an SRV name (it starts with "_").
func IsSRV(target string) bool { return strings.HasPrefix(target, "_") }

// Resolve returns target's addresses as sorted, distinct "ip:port" strings
// (IPv4-mapped IPv6 addresses as IPv4). target is "host:port" or an SRV
// name. Errors name the target.
func (r *Resolver) Resolve(ctx context.Context, target string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var out []string
	var err error
	if IsSRV(target) {
		out, err = r.resolveSRV(ctx, target)
	} else {
		out, err = r.resolveHostPort(ctx, target)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", target, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("resolve %s: %w", target, ErrNoAddresses)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func (r *Resolver) resolveHostPort(ctx context.Context, target string) ([]string, error) {
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("bad port %q", portStr)
	}
	return r.addrs(ctx, host, uint16(port), nil)
}

func (r *Resolver) resolveSRV(ctx context.Context, name string) ([]string, error) {
	_, srvs, err := r.r.LookupSRV(ctx, "", "", name)
	if err != nil {
		return nil, err
	}
	var out []string
	var errs []error
	for _, s := range srvs {
		if out, err = r.addrs(ctx, s.Target, s.Port, out); err != nil {
			errs = append(errs, err) // one target gone: keep the others
		}
	}
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// addrs appends host's addresses on port to out.
func (r *Resolver) addrs(ctx context.Context, host string, port uint16, out []string) ([]string, error) {
	ips, err := r.r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return out, err
	}
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap().WithZone(""), port).String())
	}
	return out, nil
}

// ResolveAll resolves every target. Targets that failed are missing from
// the map; their errors are joined.
func (r *Resolver) ResolveAll(ctx context.Context, targets []string) (map[string][]string, error) {
	out := make(map[string][]string, len(targets))
	var errs []error
	for _, t := range targets {
		addrs, err := r.Resolve(ctx, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[t] = addrs
	}
	return out, errors.Join(errs...)
}

// Watcher resolves Targets again every Interval. Set the fields before Run
// and do not change them after.
type Watcher struct {
	Resolver *Resolver
	Targets  []string
	Interval time.Duration // default 10s
	Log      *zap.Logger
}

// Run resolves every target each Interval until ctx ends. It starts from
// known (the answers in force, which it does not modify) and calls update,
// from Run's goroutine, with a fresh copy of all the answers whenever one of
// them changed. A target that fails keeps its last answer; the failure is
// logged once (warn) and so is the recovery (info).
func (w *Watcher) Run(ctx context.Context, known map[string][]string, update func(map[string][]string)) {
	interval := w.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	current := maps.Clone(known)
	if current == nil {
		current = make(map[string][]string)
	}
	failing := make(map[string]bool)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if w.round(ctx, current, failing) && ctx.Err() == nil {
			update(maps.Clone(current))
		}
	}
}

// round resolves every target into current and reports whether an answer
// changed.
func (w *Watcher) round(ctx context.Context, current map[string][]string, failing map[string]bool) bool {
	changed := false
	for _, t := range w.Targets {
		addrs, err := w.Resolver.Resolve(ctx, t)
		if err != nil {
			if ctx.Err() == nil && !failing[t] {
				failing[t] = true
				w.Log.Warn("dns backend did not resolve; keeping its last addresses",
					zap.String("dns", t), zap.Strings("addresses", current[t]), zap.Error(err), zap.String("fix", Fix))
			}
			continue
		}
		if failing[t] {
			delete(failing, t)
			w.Log.Info("dns backend resolves again", zap.String("dns", t))
		}
		if !slices.Equal(addrs, current[t]) {
			w.Log.Info("dns backend changed", zap.String("dns", t),
				zap.Strings("was", current[t]), zap.Strings("now", addrs))
			current[t] = addrs
			changed = true
		}
	}
	return changed
}
