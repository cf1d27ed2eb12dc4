// Package admin is stickyd's admin and metrics HTTP API. It reads the live
// state (the backend set in force, the server's counters, the worker
// supervisor) and can drain and re-enable backends; it never holds state of
// its own.
//
//	h := admin.NewHandler(admin.Source{Backends: srv.Backends, Metrics: srv.Metrics(), Open: srv.Open}, log)
//	go (&http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}).Serve(ln)
//
// Endpoints:
//
//	GET  /metrics                  Prometheus text format
//	GET  /healthz                  200 while at least one backend is up, else 503
//	GET  /backends                 JSON: name, address, state, weight, connections
//	GET  /lookup?ip=IP             JSON: the backend IP gets now, and its home backend
//	POST /backends/NAME/drain      no new connections to NAME; open ones finish
//	POST /backends/NAME/enable     undo drain
//
// Security posture: drain changes routing. Wrap the handler with Protect:
// with a token, drain and enable need it (reads stay open); on a loopback
// listener, a Host other than localhost or a loopback address is refused
// (DNS rebinding). Bind the listener to loopback or a Unix socket (or a
// network only operators and the metrics scraper reach). Cross-origin
// browser POSTs are refused (403), so a web page cannot drain backends
// through an operator's browser. Error bodies never echo more than a few
// hundred bytes of the request.
package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stickyd/stickyd/backend"
	"github.com/stickyd/stickyd/server"
	"go.uber.org/zap"
)

// Source is what the admin API reads. Backends is required; the other
// fields may be zero (their metrics are then left out or zero).
type Source struct {
	// Backends returns the backend set in force (it follows reloads).
	Backends func() *backend.Set
	// Metrics are the server's counters.
	Metrics *server.Metrics
	// Open returns the number of client connections open now.
	Open func() int64
	// MaxConnections is the cap on open client connections; 0: none.
	MaxConnections int
	// MaxPerClient returns the cap on one client's open connections in
	// force (max_connections_per_client; a reload changes it); 0: none.
	MaxPerClient func() int
	// MaxRatePerClient returns the cap on the connections one client opens
	// a second (max_connection_rate_per_client); 0: none.
	MaxRatePerClient func() int
	// Clients returns how many clients the per-client caps count now.
	Clients func() int
	// TopClients returns the n clients with the most connections open and
	// the number of clients (server.Server.TopClients), for GET /clients.
	TopClients func(n int) ([]server.ClientCount, int)
	// Workers is the worker supervisor, nil without [workers].
	Workers *backend.Supervisor
	// OrphansReaped returns how many processes that workers left behind
	// stickyd has collected (package reaper); nil leaves the metric out
	// (no workers, not PID 1).
	OrphansReaped func() int64
	// Logs returns the log lines suppressed by sampling and dropped
	// because the output did not keep up; nil leaves the metric out.
	Logs func() (suppressed, dropped int64)
	// AccessLog returns the lines given to the access log and those
	// dropped because its output did not keep up; nil leaves the metrics
	// out.
	AccessLog func() (lines, dropped int64)
	// Moves returns how many bulk transfers the epoll engine moved to a
	// less busy event loop; nil (the goroutine engine) leaves it out.
	Moves func() int64
	// Sheds returns how many long-lived connections busy event loops
	// handed to less busy ones; nil (the goroutine engine) leaves it out.
	Sheds func() int64
	// Busy returns the time the epoll engine's loops have spent running;
	// nil (the goroutine engine) leaves it out.
	Busy func() time.Duration
	// Loops is the number of the epoll engine's event loops; 0 (the
	// goroutine engine) leaves the metric out.
	Loops int
	// ProcsCeiling returns the most Go processors the adaptive GOMAXPROCS
	// may use now (the event loops, or the CPU limit when lower); nil or
	// 0 (GOMAXPROCS fixed) leaves the metric out.
	ProcsCeiling func() int64
	// ProcsTrials returns how many trials of one Go processor fewer the
	// adaptive GOMAXPROCS has made that kept one fewer (dropped) and that
	// brought it back (kept); nil (GOMAXPROCS fixed, or the goroutine
	// engine) leaves the metric out.
	ProcsTrials func() (dropped, kept int64)
	// Closings returns how many client or backend sockets are closing
	// after their pair's other side reset (their peer is still being
	// given what it was sent), and how many such closes gave up after 5 s
	// without an acknowledgement; nil leaves the metrics out.
	Closings func() (closing, stalled int64)
	// RollWorkers asks for a rolling restart of the launched workers (as
	// SIGUSR1 does) and returns where its outcome will be sent; nil (no
	// workers) answers POST /workers/restart with 404.
	RollWorkers func() <-chan RollOutcome
	// Reload asks for a reload of the config (as SIGHUP does) and returns
	// where its outcome will be sent; nil answers POST /reload with 404.
	Reload func() <-chan ReloadOutcome
}

// ReloadOutcome is the answer of POST /reload: how the reload of the config
// that the request asked for ended.
type ReloadOutcome struct {
	// Result is ReloadDone, ReloadRejected or ReloadStopped.
	Result string `json:"result"`
	// Added and Removed name the backends the reload added and removed;
	// Backends is how many there are now.
	Added    []string `json:"added,omitempty"`
	Removed  []string `json:"removed,omitempty"`
	Backends int      `json:"backends,omitempty"`
	// Ignored are the changed keys that need a restart (or a SIGUSR2
	// upgrade) to apply.
	Ignored []string `json:"ignored,omitempty"`
	Took    string   `json:"took,omitempty"`
	// Error says why the new config was rejected (the key and its line).
	Error string `json:"error,omitempty"`
	Fix   string `json:"fix,omitempty"`
}

// The results of a reload (ReloadOutcome.Result).
const (
	ReloadDone     = "reloaded" // the new config is in force
	ReloadRejected = "rejected" // it was invalid: the config in force stays
	ReloadStopped  = "stopped"  // stickyd is stopping
)

// RollOutcome is the answer of POST /workers/restart: how the rolling
// restart that the request asked for ended.
type RollOutcome struct {
	// Result is RollDone, RollFailed, RollStopped, RollNotStarted or, without
	// waiting, RollRequested.
	Result   string `json:"result"`
	Replaced int    `json:"replaced"`
	Skipped  int    `json:"skipped"` // slots whose worker was down
	Took     string `json:"took,omitempty"`
	Error    string `json:"error,omitempty"`
	Fix      string `json:"fix,omitempty"`
}

// The results of a rolling restart (RollOutcome.Result).
const (
	RollDone       = "done"        // every worker that was up replaced
	RollFailed     = "failed"      // a replacement did not start: it and the slots after it keep their old workers
	RollStopped    = "stopped"     // stickyd is stopping
	RollNotStarted = "not_started" // an upgrade holds the workers
	RollRequested  = "requested"   // ?wait=false: asked for, not waited for
)

// BackendInfo is one entry of GET /backends.
type BackendInfo struct {
	Name         string `json:"name"`
	Address      string `json:"address"`
	State        string `json:"state"`
	Weight       int    `json:"weight"`
	Ready        bool   `json:"ready"`
	Healthy      bool   `json:"healthy"`
	Active       int64  `json:"active"`
	Total        int64  `json:"total"`
	DialFailures int64  `json:"dial_failures"`
	// EarlyCloses counts connections the backend closed before its first
	// byte; FirstByteTimeouts those it left silent past first_byte_timeout.
	EarlyCloses       int64 `json:"early_closes"`
	FirstByteTimeouts int64 `json:"first_byte_timeouts"`
}

// WorkerInfo is one entry of GET /workers: a launched worker's slot.
type WorkerInfo struct {
	Name    string `json:"name"`
	Slot    int    `json:"slot"`
	Address string `json:"address"`
	// Ready is false while the slot has no worker that accepts
	// connections (starting, or restarting after an exit); Pid and
	// UptimeSeconds are then 0.
	Ready         bool    `json:"ready"`
	Pid           int     `json:"pid"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	// MemoryBytes is the worker's resident memory (its process group's)
	// at the last reading, every 5 s.
	MemoryBytes        int64 `json:"memory_bytes"`
	Restarts           int64 `json:"restarts"`
	Replacements       int64 `json:"replacements"`
	MemoryReplacements int64 `json:"memory_replacements"`
	// AdapterNamespaces are the socket.io namespaces whose cluster adapter
	// the worker has spoken in over its IPC channel: empty for an app
	// without @socket.io/cluster-adapter, or one whose channel a wrapper
	// (npm start) took, whose broadcasts then stay on this worker.
	AdapterNamespaces []string `json:"adapter_namespaces"`
}

// LookupResult is the answer of GET /lookup.
type LookupResult struct {
	IP string `json:"ip"`
	// Backend is where a connection from IP goes now; "" when none is up.
	Backend string `json:"backend"`
	// Home is IP's backend when every backend is up.
	Home string `json:"home"`
}

// NewHandler returns the admin API's handler. log receives the drain and
// enable actions.
func NewHandler(src Source, log *zap.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a := &api{src: src, log: log}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /backends", a.backends)
	mux.HandleFunc("GET /lookup", a.lookup)
	mux.HandleFunc("POST /backends/{rest...}", a.action)
	mux.HandleFunc("POST /workers/restart", a.rollWorkers)
	mux.HandleFunc("POST /reload", a.reload)
	mux.HandleFunc("GET /workers", a.workers)
	mux.HandleFunc("GET /clients", a.clients)
	// A web page open in an operator's browser must not drain backends.
	return http.NewCrossOriginProtection().Handler(mux)
}

type api struct {
	src Source
	log *zap.Logger
}

func (a *api) healthz(w http.ResponseWriter, r *http.Request) {
	set := a.src.Backends()
	up := 0
	for _, b := range set.Backends() {
		if b.Up() {
			up++
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if up == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "no backend up (of %d)\n", len(set.Backends()))
		return
	}
	fmt.Fprintf(w, "ok: %d of %d backends up\n", up, len(set.Backends()))
}

func (a *api) backends(w http.ResponseWriter, r *http.Request) {
	set := a.src.Backends()
	out := make([]BackendInfo, 0, len(set.Backends()))
	for i, b := range set.Backends() {
		out = append(out, info(set, i, b))
	}
	writeJSON(w, http.StatusOK, out)
}

func info(set *backend.Set, i int, b *backend.Backend) BackendInfo {
	return BackendInfo{Name: b.Name, Address: b.Addr(), State: b.State(), Weight: set.Weight(i),
		Ready: b.Ready(), Healthy: b.Healthy(), Active: b.Active(), Total: b.Total(), DialFailures: b.DialFailures(),
		EarlyCloses: b.EarlyCloses(), FirstByteTimeouts: b.FirstByteTimeouts()}
}

func (a *api) lookup(w http.ResponseWriter, r *http.Request) {
	s := r.URL.Query().Get("ip")
	ip, err := netip.ParseAddr(s)
	if err != nil {
		http.Error(w, fmt.Sprintf("want ?ip=IP, got %q", clip(s, 64)), http.StatusBadRequest)
		return
	}
	ip = ip.Unmap().WithZone("")
	set := a.src.Backends()
	res := LookupResult{IP: ip.String(), Home: set.Preferred(ip).Name}
	status := http.StatusOK
	if b := set.Lookup(ip); b != nil {
		res.Backend = b.Name
	} else {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, res)
}

// action serves POST /backends/NAME/drain and /backends/NAME/enable. NAME
// may contain slashes (unix:/path) and colons (an address).
func (a *api) action(w http.ResponseWriter, r *http.Request) {
	rest := r.PathValue("rest")
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		http.NotFound(w, r)
		return
	}
	name, verb := rest[:i], rest[i+1:]
	if verb != "drain" && verb != "enable" {
		http.NotFound(w, r)
		return
	}
	set := a.src.Backends()
	for j, b := range set.Backends() {
		if b.Name != name {
			continue
		}
		b.SetDraining(verb == "drain")
		msg := "backend enabled via the admin API"
		if verb == "drain" {
			msg = "backend drained via the admin API"
		}
		a.log.Info(msg, zap.String("backend", name),
			zap.String("remote", r.RemoteAddr), zap.Int64("active", b.Active()))
		writeJSON(w, http.StatusOK, info(set, j, b))
		return
	}
	http.Error(w, fmt.Sprintf("no backend named %q", clip(name, 256)), http.StatusNotFound)
}

// ClientsResult is GET /clients' answer.
type ClientsResult struct {
	// Limit is max_connections_per_client in force, RateLimit
	// max_connection_rate_per_client.
	Limit     int `json:"limit"`
	RateLimit int `json:"rate_limit"`
	// Clients is how many clients have connections open (as the limit
	// counts them: an IPv4 address, an IPv6 /64).
	Clients int `json:"clients"`
	// Top are the clients with the most connections open, most first.
	Top []server.ClientCount `json:"top"`
}

// clients serves GET /clients?top=N (default 20, at most 1000): the
// clients with the most connections open, to size
// max_connections_per_client or find the one holding them. Clients are
// counted only while a per-client limit (connections or rate) is on (404
// otherwise).
func (a *api) clients(w http.ResponseWriter, r *http.Request) {
	n := 20
	if s := r.URL.Query().Get("top"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 1000 {
			http.Error(w, fmt.Sprintf("want ?top=N, 1 to 1000, got %q", clip(s, 32)), http.StatusBadRequest)
			return
		}
		n = v
	}
	limit, rate := 0, 0
	if a.src.MaxPerClient != nil {
		limit = a.src.MaxPerClient()
	}
	if a.src.MaxRatePerClient != nil {
		rate = a.src.MaxRatePerClient()
	}
	if a.src.TopClients == nil || limit == 0 && rate == 0 {
		http.Error(w, "clients are counted only under a per-client limit: set max_connections_per_client "+
			"(a high one, such as 100000, counts them without refusing anyone)", http.StatusNotFound)
		return
	}
	top, clients := a.src.TopClients(n)
	if top == nil {
		top = []server.ClientCount{}
	}
	writeJSON(w, http.StatusOK, ClientsResult{Limit: limit, RateLimit: rate, Clients: clients, Top: top})
}

// workers serves GET /workers: each launched worker's slot, pid, uptime,
// memory and counts (pm2 list, for stickyd).
func (a *api) workers(w http.ResponseWriter, r *http.Request) {
	sup := a.src.Workers
	if sup == nil {
		http.Error(w, "this stickyd launches no workers ([workers] in the config)", http.StatusNotFound)
		return
	}
	out := []WorkerInfo{}
	for _, st := range sup.Status() {
		info := WorkerInfo{Name: st.Name, Slot: st.Slot, Address: st.Address, Ready: st.Pid != 0, Pid: st.Pid,
			MemoryBytes: st.Memory, Restarts: st.Restarts, Replacements: st.Replacements, MemoryReplacements: st.MemoryReplacements,
			AdapterNamespaces: st.AdapterNamespaces}
		if info.AdapterNamespaces == nil {
			info.AdapterNamespaces = []string{}
		}
		if !st.ReadySince.IsZero() {
			info.UptimeSeconds = time.Since(st.ReadySince).Round(time.Millisecond).Seconds()
		}
		out = append(out, info)
	}
	writeJSON(w, http.StatusOK, out)
}

// rollWorkers serves POST /workers/restart: a rolling restart of the
// launched workers, as SIGUSR1. It answers when that restart has ended
// (200 done; 500 a replacement did not start; 409 an upgrade holds the
// workers; 503 stickyd is stopping), or at once with 202 given ?wait=false.
// One asked for while another runs follows it.
func (a *api) rollWorkers(w http.ResponseWriter, r *http.Request) {
	if a.src.RollWorkers == nil {
		http.Error(w, "this stickyd launches no workers ([workers] in the config): nothing to restart", http.StatusNotFound)
		return
	}
	wait := true
	switch v := r.URL.Query().Get("wait"); v {
	case "", "true", "1":
	case "false", "0":
		wait = false
	default:
		http.Error(w, fmt.Sprintf("wait=%q: want true or false", clip(v, 64)), http.StatusBadRequest)
		return
	}
	a.log.Info("rolling restart of the workers requested via the admin API", zap.String("remote", r.RemoteAddr), zap.Bool("wait", wait))
	done := a.src.RollWorkers()
	if !wait {
		select {
		case out := <-done: // answered at once: stickyd is stopping
			writeJSON(w, rollStatus(out), out)
		default:
			writeJSON(w, http.StatusAccepted, RollOutcome{Result: RollRequested})
		}
		return
	}
	select {
	case out := <-done:
		writeJSON(w, rollStatus(out), out)
	case <-r.Context().Done(): // the client left; the rolling restart goes on
	}
}

// reload serves POST /reload: a reload of the config, as SIGHUP, answered
// when it has ended: 200 with what changed, 400 with the error when the
// new config was rejected (the one in force stays), 503 when stickyd is
// stopping. One asked for while another runs follows it, so that it reads
// the file as it is now.
func (a *api) reload(w http.ResponseWriter, r *http.Request) {
	if a.src.Reload == nil {
		http.Error(w, "reload is not available here", http.StatusNotFound)
		return
	}
	a.log.Info("reload requested via the admin API", zap.String("remote", r.RemoteAddr))
	select {
	case out := <-a.src.Reload():
		status := http.StatusOK
		switch out.Result {
		case ReloadRejected:
			status = http.StatusBadRequest
		case ReloadStopped:
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, out)
	case <-r.Context().Done(): // the client left; the reload goes on
	}
}

// rollStatus is the HTTP status of a rolling restart's outcome.
func rollStatus(out RollOutcome) int {
	switch out.Result {
	case RollDone:
		return http.StatusOK
	case RollNotStarted:
		return http.StatusConflict
	case RollStopped:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
