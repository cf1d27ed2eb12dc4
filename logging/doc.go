// Package logging builds stickyd's zap logger so that logging can neither
// flood the output nor stall the proxy when attackers make it log:
//
//   - Sampling (sampler.go): each cause of a warning or error (its level,
//     message and "cause" field) is written at most Burst times a second;
//     the rest are counted, and a summary line ("log lines suppressed")
//     names the busiest causes every ReportEvery.
//   - An asynchronous bounded writer (writer.go): a logging goroutine only
//     copies the line into a buffer of at most BufferBytes; one goroutine
//     writes to the output. When the output does not keep up (a pipe nobody
//     reads), lines are dropped and counted instead of blocking.
//
// Both counts are exported as Counts (for the metrics) and logged.
//
// The access log (access.go) is one line per client connection, never
// sampled: to stderr (the main log's writer), stdout or a file, through a
// writer of its own that batches its lines (Writer.SetDelay) and counts
// what it could not write (Dropped, LastError).
//
//	log, logs := logging.New(logging.Options{Level: zapcore.InfoLevel, Format: "json"}, os.Stderr)
//	stop := logs.Report(log) // the periodic summary line
//	defer func() { stop(); logs.Close(2 * time.Second) }() // flush at exit
//
//	access, err := logging.OpenAccess("/var/log/stickyd/access.log", "json", logs)
//	if err != nil { ... } // the error names the fix
//	access.Log.Info("connection", zap.String("client", "203.0.113.7:51000"))
//	defer access.Close(time.Second)
package logging
