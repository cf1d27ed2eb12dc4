#!/usr/bin/env bash
# bench/scale-perf.sh OUT K "NAMES" RATE: where the CPU goes on a larger machine. Per
# proxy (names as in scale.sh, whose start_proxy it uses), a 3 s system-wide profile of the
# proxy's K cores (perf, cpu-clock, call graphs) in the middle of a 6 s open-loop run at RATE
# connections/s (0: scale.sh's closed-loop rate scenario), then: context switches, the
# profile by program, self time by symbol, and inclusive time of system calls, of the Go
# scheduler and of stickyd's functions (nginx's for nginx), as shares of the proxy's samples.
# Runs from the bundle of scale.sh with, added: an unstripped stickyd (go build without
# -ldflags "-s -w", for Go symbols), and perf with the libraries it loads that lib/ lacks:
#
#   cp "$(command -v perf)" .bundle/ && mkdir -p .bundle/perflib
#   ldd "$(command -v perf)" | awk '/=>/{print $3}' | while read -r f; do
#     [ -f ".bundle/lib/${f##*/}" ] || cp -L "$f" .bundle/perflib/; done
#   cp bench/scale.sh bench/scale-perf.sh .bundle/
#   (the bundle is then over the device's 64 MiB: carry it as a tar.xz)
set -u
OUT=$(mkdir -p "$1" && cd "$1" && pwd); K=$2; NAMES=$3; RATE=$4
B=$(cd "$(dirname "$0")" && pwd); cd "$B"
source <(sed -n '/^start_proxy()/,/^}/p; /^stop_proxy()/,/^}/p' scale.sh)
LDS="$B/lib/ld-linux-x86-64.so.2 --library-path $B/lib"
PERF="$B/lib/ld-linux-x86-64.so.2 --library-path $B/lib:$B/perflib $B/perf"
LAST=$(($(nproc) - 1)); PORT=3990 ADMIN=3989
ulimit -n 20000
sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 net.ipv4.tcp_tw_reuse=1 kernel.perf_event_paranoid=-1 kernel.kptr_restrict=0 2>/dev/null
BP="127.0.0.1:9991,127.0.0.1:9992,127.0.0.1:9993,127.0.0.1:9994"
rest="$K-$LAST"
taskset -c "$rest" ./lg backend -listen "$BP" >"$OUT/backend.log" 2>&1 &
BPID=$!
sleep 0.3
for name in $NAMES; do
	start_proxy "$name" "$K" || continue
	if [ "$RATE" = 0 ]; then
		taskset -c "$rest" ./lg rate -target 127.0.0.1:$PORT -c $((K * 64)) -d 6s -warmup 1s -pid "$PP" >"$OUT/$name.lg" 2>&1 &
	else
		taskset -c "$rest" ./lg open -target 127.0.0.1:$PORT -rate "$RATE" -d 6s -warmup 1s -pid "$PP" >"$OUT/$name.lg" 2>&1 &
	fi
	LG=$!
	sleep 2.5
	taskset -c "$rest" $PERF stat -a -C 0-$((K - 1)) -e context-switches,cpu-migrations,cpu-clock -o "$OUT/$name.stat" -- sleep 3 &
	taskset -c "$rest" $PERF record -a -C 0-$((K - 1)) -e cpu-clock -F 1999 -g -o "$OUT/$name.data" -- sleep 3 >/dev/null 2>&1
	wait $LG
	stop_proxy
	echo "== $name K=$K rate=$RATE"
	grep -E "conns_per_s|cpu_us_per_conn|p99" "$OUT/$name.lg"
	cat "$OUT/$name.stat" | grep -E "context|migrations|cpu-clock"
	$PERF report -i "$OUT/$name.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null | grep "%" | head -12
	comm=stickyd; [[ $name == stickyd* ]] || comm=ld-linux-x86-64
	$PERF report -i "$OUT/$name.data" --comms "$comm" --percentage relative --no-children --sort dso,sym --stdio -g none 2>/dev/null | grep "%" | head -40
	echo "-- inclusive (children): system calls and Go scheduler"
	$PERF report -i "$OUT/$name.data" --comms "$comm" --percentage relative --children --sort sym --stdio -g none 2>/dev/null |
		grep -E "__x64_sys_|runtime\.(schedule|findRunnable|netpoll|park_m|futex|stealWork|mcall|gcBgMarkWorker|mallocgc|wakep|startm|stopm|notesleep|notewakeup|sysmon)|relay\.|server\.|handle_softirqs|ngx_" | head -45
done
kill "$BPID"; wait "$BPID" 2>/dev/null
