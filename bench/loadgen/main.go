// Command loadgen is the load generator and backend of stickyd's benchmark
// harness (bench/run.sh). One binary, one mode per process:
//
//	loadgen backend -listen 127.0.0.1:9001,127.0.0.1:9002   # PROXY-aware echo/sink/source
//	loadgen check   -target 127.0.0.1:8000                   # proxy sends a correct PROXY header?
//	loadgen rate    -target 127.0.0.1:8000 -c 16 -d 10s -pid 1234
//	loadgen stream  -target 127.0.0.1:8000 -bytes 1073741824 -pid 1234
//	loadgen idle    -target 127.0.0.1:8000 -levels 1000,5000,9000 -pid 1234
//	loadgen mix     -target 127.0.0.1:8000 -bulk 60 -c 8 -d 10s     # short connections beside downloads
//	loadgen open    -target 127.0.0.1:8000 -rate 1000 -d 10s -pid 1234   # open loop, fixed rate
//	loadgen report  -in raw.csv -outdir results -proxies stickyd,haproxy,nginx
//	loadgen ports   -n 3                                     # print free loopback ports
//
// Client modes dial from many source addresses (-src, default 127.1.0.0/16)
// so that neither the client nor a proxy hashing on the client address runs
// out of ephemeral ports. With -pid, a client mode also samples the proxy's
// process tree (the pid and all its descendants) from /proc and, with -out,
// appends "proxy,rep,metric,value" rows to a CSV file that report
// summarises (median over repetitions).
//
// The wire protocol between clients and backend, after the proxy's PROXY
// header, starts with one command byte; see proto.go.
package main

import (
	"fmt"
	"os"
)

var modes = map[string]func(args []string) error{
	"backend": runBackend,
	"check":   runCheck,
	"rate":    runRate,
	"stream":  runStream,
	"idle":    runIdle,
	"mix":     runMix,
	"open":    runOpen,
	"chat":    runChat,
	"report":  runReport,
	"ports":   runPorts,
}

func main() {
	if len(os.Args) < 2 || modes[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: loadgen backend|check|rate|stream|idle|mix|open|chat|report|ports [flags]")
		os.Exit(2)
	}
	if err := modes[os.Args[1]](os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
