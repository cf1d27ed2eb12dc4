package admin

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stickyd/stickyd/backend"
)

// collector is a prometheus.Collector that reads stickyd's own atomic
// counters at scrape time, so nothing is counted twice.
type collector struct {
	src Source

	backendUp, backendHealthy, backendState, backendWeight     *prometheus.Desc
	backendActive, backendTotal, backendDialFailures           *prometheus.Desc
	open, max, relayed, rejected, limitWaits, bytes            *prometheus.Desc
	headerErrors, workerRestarts, workerReplacements           *prometheus.Desc
	logLinesDropped, handshakes, moves, sheds, loopBusy, loops *prometheus.Desc
	backendEarlyCloses, backendFirstByteTimeouts               *prometheus.Desc
	closing, closesStalled, procsCeiling, procsTrials          *prometheus.Desc
	orphansReaped, workerMemory, workerMemoryReplacements      *prometheus.Desc
	maxPerClient, maxRatePerClient, clients, workerMessages    *prometheus.Desc
	accessLines, accessDropped                                 *prometheus.Desc
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("stickyd_"+name, help, labels, nil)
}

// NewCollector returns the collector of src's metrics (registered by
// NewHandler; exported for embedding stickyd's metrics elsewhere).
func NewCollector(src Source) prometheus.Collector {
	c := &collector{
		src:                 src,
		backendUp:           desc("backend_up", "1 if the backend takes new connections (ready, healthy, not draining or cooling down).", "backend"),
		backendHealthy:      desc("backend_healthy", "1 unless active health checks failed.", "backend"),
		backendState:        desc("backend_state", "1 for the backend's current state: up, down (not ready), unhealthy, cooldown or draining.", "backend", "state"),
		backendWeight:       desc("backend_weight", "The backend's weight.", "backend"),
		backendActive:       desc("backend_connections_active", "Open connections to the backend.", "backend"),
		backendTotal:        desc("backend_connections_total", "Connections made to the backend.", "backend"),
		backendDialFailures: desc("backend_dial_failures_total", "Failed dials to the backend.", "backend"),
		open:                desc("connections_open", "Client connections open now."),
		max:                 desc("connections_max", "The cap on open client connections (max_connections); 0: none."),
		relayed:             desc("connections_relayed_total", "Client connections relayed to a backend."),
		rejected:            desc("connections_rejected_total", "Client connections closed without a backend, by reason (no_backend: every dial failed; header: see stickyd_header_errors_total; client_limit: the client had max_connections_per_client open; client_rate: it had opened max_connection_rate_per_client in the last second).", "reason"),
		limitWaits:          desc("max_connections_reached_total", "Times accepting paused because max_connections were open (clients waited in the backlog)."),
		handshakes:          desc("handshakes_total", "Client handshakes by where they ran: on the event loop that accepted the client, or handed to a goroutine (a trusted upstream's header, a backend off loopback, HTTP header mode).", "where"),
		bytes:               desc("bytes_total", "Bytes relayed by finished connections: in is client to backend, out is backend to client.", "direction"),
		headerErrors:        desc("header_errors_total", "PROXY and HTTP header errors, by kind.", "kind"),
		workerRestarts:      desc("worker_restarts_total", "Restarts of launched workers (after an exit, a failed start or a startup timeout).", "worker"),
		workerReplacements:  desc("worker_replacements_total", "Launched workers replaced by a rolling restart (SIGUSR1).", "worker"),
		moves:               desc("bulk_moves_total", "Bulk transfers handed from an event loop with two or more of them above another to the least busy loop."),
		sheds:               desc("busy_moves_total", "Long-lived connections handed from an event loop busy over half the time to an accepting loop busy a quarter of the time less (they may have opened while few loops accepted)."),
		loopBusy:            desc("loop_busy_seconds_total", "Time the event loops spent running (wall clock from each wake-up to the next park), summed over the loops: its rate divided by stickyd_event_loops is how busy they are (near 1: the loops are the limit)."),
		loops:               desc("event_loops", "The epoll engine's event loops (one per core at start)."),
		logLinesDropped:     desc("log_lines_dropped_total", "Log lines not written, by reason (rate_limited: over the per-cause rate; output_blocked: the log output did not keep up).", "reason"),
	}
	c.backendEarlyCloses = desc("backend_early_closes_total",
		"Relayed connections the backend closed or reset before its first byte, while the client was there.", "backend")
	c.backendFirstByteTimeouts = desc("backend_first_byte_timeouts_total",
		"Relayed connections closed because the backend sent nothing within first_byte_timeout.", "backend")
	c.closing = desc("connections_closing",
		"Connections whose backend or client reset, held while the other side is still given what it was sent (a lingering close; they count as open).")
	c.procsCeiling = desc("gomaxprocs_ceiling",
		"The most Go processors the adaptive GOMAXPROCS may use now: the event loops, or the CPU limit (CPUs, affinity mask, cgroup quota, as the Go runtime reads them) when lower. go_sched_gomaxprocs_threads is the number in use.")
	c.procsTrials = desc("gomaxprocs_trials_total",
		"Trials of one Go processor fewer that the adaptive GOMAXPROCS made where its CPU thresholds could not decide, by result (dropped: the event loops' work rate held, one fewer stayed; kept: it fell, the processor came back).", "result")
	c.workerMemory = desc("worker_memory_bytes",
		"Resident memory of the launched worker's process group (summed over its processes), read every 5 s; 0 while it is not ready.", "worker")
	c.workerMemoryReplacements = desc("worker_memory_replacements_total",
		"Launched workers replaced, without downtime, for staying above workers.max_memory.", "worker")
	c.orphansReaped = desc("orphans_reaped_total",
		"Exited processes that workers left behind (a wrapper's app, a crashed worker's children), collected by stickyd as their subreaper; as PID 1 in a container, any orphan there (docker exec sessions' too).")
	c.maxPerClient = desc("connections_per_client_max",
		"The cap on one client's open connections (max_connections_per_client: an IPv4 address or an IPv6 /64); 0: none.")
	c.maxRatePerClient = desc("connection_rate_per_client_max",
		"The cap on the connections one client may open a second (max_connection_rate_per_client); 0: none.")
	c.clients = desc("clients",
		"Clients (IPv4 addresses, IPv6 /64s) with connections open, as max_connections_per_client and max_connection_rate_per_client count them (0 while both have been off since the start).")
	c.workerMessages = desc("worker_messages_total",
		"Messages of socket.io's cluster adapter that stickyd relayed between the launched workers (workers.ipc), by result (relayed: queued for a worker; dropped: a worker's queue full, or a message over 64 MiB).", "result")
	c.accessLines = desc("access_log_lines_total",
		"Lines given to the access log (access_log): one per client connection that ended while it was on.")
	c.accessDropped = desc("access_log_lines_dropped_total",
		"Access log lines not written because its output did not keep up (for access_log = \"stderr\", stickyd_log_lines_dropped_total counts them instead).")
	c.closesStalled = desc("closes_stalled_total",
		"Lingering closes that gave up after 5 s without an acknowledgement from the peer (what it had not acknowledged was lost).")
	return c
}

// Describe sends every descriptor (prometheus.Collector).
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.backendUp, c.backendHealthy, c.backendState, c.backendWeight,
		c.backendActive, c.backendTotal, c.backendDialFailures, c.open, c.max, c.relayed, c.rejected,
		c.limitWaits, c.handshakes, c.moves, c.sheds, c.loopBusy, c.loops, c.bytes, c.headerErrors, c.workerRestarts, c.workerReplacements, c.logLinesDropped,
		c.backendEarlyCloses, c.backendFirstByteTimeouts, c.closing, c.closesStalled, c.procsCeiling, c.procsTrials, c.orphansReaped, c.workerMemory, c.workerMemoryReplacements,
		c.maxPerClient, c.maxRatePerClient, c.clients, c.workerMessages, c.accessLines, c.accessDropped} {
		ch <- d
	}
}

// Collect reads the counters (prometheus.Collector).
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.collectBackends(ch)
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	if c.src.Open != nil {
		gauge(c.open, c.src.Open())
	}
	gauge(c.max, int64(c.src.MaxConnections))
	if c.src.MaxPerClient != nil {
		gauge(c.maxPerClient, int64(c.src.MaxPerClient()))
	}
	if c.src.MaxRatePerClient != nil {
		gauge(c.maxRatePerClient, int64(c.src.MaxRatePerClient()))
	}
	if c.src.Clients != nil {
		gauge(c.clients, int64(c.src.Clients()))
	}
	if m := c.src.Metrics; m != nil {
		counter(c.relayed, m.Accepted.Load())
		counter(c.limitWaits, m.LimitWaits.Load())
		counter(c.handshakes, m.LoopHandshakes.Load(), "loop")
		counter(c.handshakes, m.GoroutineHandshakes.Load(), "goroutine")
		counter(c.bytes, m.BytesIn.Load(), "in")
		counter(c.bytes, m.BytesOut.Load(), "out")
		var headers int64
		for kind, n := range m.HeaderErrors() {
			counter(c.headerErrors, n, kind)
			headers += n
		}
		counter(c.rejected, m.NoBackend.Load(), "no_backend")
		counter(c.rejected, headers, "header")
		counter(c.rejected, m.ClientLimit.Load(), "client_limit")
		counter(c.rejected, m.ClientRate.Load(), "client_rate")
	}
	if c.src.Moves != nil {
		counter(c.moves, c.src.Moves())
	}
	if c.src.Sheds != nil {
		counter(c.sheds, c.src.Sheds())
	}
	if c.src.Busy != nil {
		ch <- prometheus.MustNewConstMetric(c.loopBusy, prometheus.CounterValue, c.src.Busy().Seconds())
	}
	if c.src.Closings != nil {
		closing, stalled := c.src.Closings()
		gauge(c.closing, closing)
		counter(c.closesStalled, stalled)
	}
	if c.src.Loops > 0 {
		gauge(c.loops, int64(c.src.Loops))
	}
	if c.src.ProcsCeiling != nil {
		if n := c.src.ProcsCeiling(); n > 0 {
			gauge(c.procsCeiling, n)
		}
	}
	if c.src.ProcsTrials != nil {
		dropped, kept := c.src.ProcsTrials()
		counter(c.procsTrials, dropped, "dropped")
		counter(c.procsTrials, kept, "kept")
	}
	if c.src.Logs != nil {
		suppressed, dropped := c.src.Logs()
		counter(c.logLinesDropped, suppressed, "rate_limited")
		counter(c.logLinesDropped, dropped, "output_blocked")
	}
	if c.src.AccessLog != nil {
		lines, dropped := c.src.AccessLog()
		counter(c.accessLines, lines)
		counter(c.accessDropped, dropped)
	}
	if c.src.OrphansReaped != nil {
		counter(c.orphansReaped, c.src.OrphansReaped())
	}
	if sup := c.src.Workers; sup != nil {
		for _, w := range sup.Slots() {
			counter(c.workerRestarts, sup.Restarts(w.Slot), w.Name)
			counter(c.workerReplacements, sup.Replacements(w.Slot), w.Name)
			gauge(c.workerMemory, sup.Memory(w.Slot), w.Name)
			counter(c.workerMemoryReplacements, sup.MemoryReplacements(w.Slot), w.Name)
		}
		if relayed, dropped, ok := sup.Messages(); ok {
			counter(c.workerMessages, relayed, "relayed")
			counter(c.workerMessages, dropped, "dropped")
		}
	}
}

func (c *collector) collectBackends(ch chan<- prometheus.Metric) {
	set := c.src.Backends()
	for i, b := range set.Backends() {
		gauge := func(d *prometheus.Desc, v int64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), append([]string{b.Name}, labels...)...)
		}
		state := b.State()
		gauge(c.backendUp, b2i(state == backend.StateUp))
		gauge(c.backendHealthy, b2i(b.Healthy()))
		for _, s := range backend.States {
			gauge(c.backendState, b2i(s == state), s)
		}
		gauge(c.backendWeight, int64(set.Weight(i)))
		gauge(c.backendActive, b.Active())
		ch <- prometheus.MustNewConstMetric(c.backendTotal, prometheus.CounterValue, float64(b.Total()), b.Name)
		ch <- prometheus.MustNewConstMetric(c.backendDialFailures, prometheus.CounterValue, float64(b.DialFailures()), b.Name)
		ch <- prometheus.MustNewConstMetric(c.backendEarlyCloses, prometheus.CounterValue, float64(b.EarlyCloses()), b.Name)
		ch <- prometheus.MustNewConstMetric(c.backendFirstByteTimeouts, prometheus.CounterValue, float64(b.FirstByteTimeouts()), b.Name)
	}
}

func b2i(v bool) int64 {
	if v {
		return 1
	}
	return 0
}
