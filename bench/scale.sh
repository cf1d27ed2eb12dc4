#!/usr/bin/env bash
# bench/scale.sh: multi-core side by side, for a larger machine. Each proxy is
# pinned to cores 0..K-1, the load generator and backends to the others.
# Runs from a bundle made by ../shared/scale/bundle.sh (static stickyd and lg,
# haproxy, nginx and its stream module with their libraries in lib/) with
# this script copied in:
#
#   bundle.sh .bundle bench/loadgen && cp bench/scale.sh .bundle/
#   cd .bundle && bash scale.sh OUT_DIR "2 4 8" "RATE..."
#
# Per K and proxy: the short-connection scenario with 64 x K workers
# (saturation, or the load generator's limit), then open loop at each RATE
# connections/s; with CHAT=1, then 100 x K long-lived connections opened at
# 200/s exchanging 64 B messages (lg chat: whether connections opened
# while stickyd idled spread over its cores; msg/s and CPU µs per message
# in the conn/s and CPU columns). stickyd runs twice: as shipped (adaptive GOMAXPROCS, at
# most K) and with GOMAXPROCS=K fixed ("stickyd-fixedP"); PROXIES picks
# (any stickyd* binary in the bundle; BIN-P4 is BIN with GOMAXPROCS=4;
# nginx-hc is nginx with proxy_half_close on, stickyd's half-close).
# Prints one line per run: K proxy scenario conn/s p99_ms cpu_us_per_conn;
# with SAMPLE=1, for stickyd also the mean GOMAXPROCS over the run ("P",
# read from its admin metrics every 0.25 s) and its event loops' busy time
# in cores. Sampling costs stickyd at low rates: each scrape makes a few
# goroutines wait for a P, and its adaptive GOMAXPROCS adds one (2 cores,
# 1000/s, a busy machine: up to 20% more CPU per connection), so leave it
# off for ratios.
set -u
OUT=$(mkdir -p "$1" && cd "$1" && pwd); KS=${2:-"2 4 8"}; RATES=${3:-"20000"}
B=$(cd "$(dirname "$0")" && pwd); cd "$B"
LDS="$B/lib/ld-linux-x86-64.so.2 --library-path $B/lib"
LAST=$(($(nproc) - 1))
ulimit -n 20000 2>/dev/null
echo "host: $(uname -r) cpus=$(nproc) nofile=$(ulimit -n)"
sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 net.ipv4.tcp_tw_reuse=1 2>/dev/null
BP="127.0.0.1:9991,127.0.0.1:9992,127.0.0.1:9993,127.0.0.1:9994"
PORT=3990 ADMIN=3989

start_proxy() { # NAME K: sets PP
	local cpus="0-$(($2 - 1))"
	case $1 in
	stickyd*) # ./NAME, or ./BIN for BIN-fixedP with GOMAXPROCS=K
		local env=() bin=$1
		[[ $1 == *-fixedP ]] && env=(GOMAXPROCS="$2") bin=${1%-fixedP}
		[[ $1 =~ ^(.*)-P([0-9]+)$ ]] && env=(GOMAXPROCS="${BASH_REMATCH[2]}") bin=${BASH_REMATCH[1]}
		env "${env[@]}" taskset -c "$cpus" "./$bin" --listen 127.0.0.1:$PORT --admin 127.0.0.1:$ADMIN --backend b0=127.0.0.1:9991 \
			--backend b1=127.0.0.1:9992 --backend b2=127.0.0.1:9993 --backend b3=127.0.0.1:9994 \
			--send-proxy v2 --log-level error >"$OUT/$1-$2.log" 2>&1 &
		PP=$! ;;
	haproxy)
		cat >"$OUT/h.cfg" <<-EOC
			global
			    maxconn 8000
			    maxpipes 1024
			    nbthread $2
			defaults
			    mode tcp
			    option splice-auto
			    timeout connect 5s
			    timeout client 120s
			    timeout server 120s
			frontend fe
			    bind 127.0.0.1:$PORT
			    default_backend be
			backend be
			    balance source
			    hash-type consistent
			    server b0 127.0.0.1:9991 send-proxy-v2
			    server b1 127.0.0.1:9992 send-proxy-v2
			    server b2 127.0.0.1:9993 send-proxy-v2
			    server b3 127.0.0.1:9994 send-proxy-v2
		EOC
		taskset -c "$cpus" $LDS ./haproxy -db -f "$OUT/h.cfg" >"$OUT/haproxy-$2.log" 2>&1 &
		PP=$! ;;
	nginx | nginx-hc) # nginx-hc: with proxy_half_close on (stickyd's half-close)
		local hc=""
		[ "$1" = nginx-hc ] && hc="proxy_half_close on;"
		mkdir -p "$OUT/ngx"
		cat >"$OUT/ngx/n.conf" <<-EOC
			load_module $B/ngx_stream_module.so;
			worker_processes $2;
			worker_rlimit_nofile 20000;
			daemon off;
			error_log stderr error;
			pid $OUT/ngx/n.pid;
			events { worker_connections 9000; }
			stream {
			    upstream be { hash \$remote_addr consistent; server 127.0.0.1:9991; server 127.0.0.1:9992; server 127.0.0.1:9993; server 127.0.0.1:9994; }
			    server { listen 127.0.0.1:$PORT reuseport; proxy_pass be; proxy_protocol on; $hc }
			}
		EOC
		taskset -c "$cpus" $LDS ./nginx -p "$OUT/ngx" -c "$OUT/ngx/n.conf" >"$OUT/$1-$2.log" 2>&1 &
		PP=$! ;;
	esac
	for _ in $(seq 50); do ./lg check -target 127.0.0.1:$PORT -timeout 1s >/dev/null 2>&1 && return 0; sleep 0.2; done
	echo "$1 K=$2: no proxied connection"; kill "$PP"; return 1
}

stop_proxy() {
	local c
	for c in $(pgrep -P "$PP"); do kill "$c" 2>/dev/null; done
	kill "$PP" 2>/dev/null; wait "$PP" 2>/dev/null; sleep 0.5
}

# line K NAME SCENARIO FILE: one result line from lg's output (and the
# sampler's, for stickyd).
line() {
	awk -v k="$1" -v n="$2" -v s="$3" '$1 ~ /conns_per_s|msgs_per_s/ {c=$2} $1 ~ /p99_ms/ {p=$2} $1 ~ /cpu_us_per_(conn|msg)/ {u=$2}
		$1 == "P" {sp += $2; np++} $1 == "B" {if (!b0) {b0 = $2; t0 = $3} b1 = $2; t1 = $3}
		END {printf "K=%s %-15s %-10s conn/s %8.0f  p99 ms %7.2f  CPU us/conn %6.1f", k, n, s, c, p, u
			if (np) printf "  P %4.1f  busy cores %4.2f", sp / np, (t1 > t0 ? (b1 - b0) / (t1 - t0) : 0)
			printf "\n"}' "$4" "$OUT/sampler.out"
}

# sample NAME: for stickyd, the admin metrics every 0.25 s into sampler.out
# (lines "P gomaxprocs" and "B loop_busy_seconds unix_time") until killed.
sample() {
	: >"$OUT/sampler.out"
	[[ ${SAMPLE:-0} == 1 && $1 == stickyd* ]] || { SPID=; return; }
	(taskset -pc "$rest" $BASHPID >/dev/null 2>&1 # off the proxy's cores
	while :; do
		metrics | awk -v t="$(date +%s.%N)" \
			'$1 == "go_sched_gomaxprocs_threads" {print "P", $2} $1 == "stickyd_loop_busy_seconds_total" {print "B", $2, t}'
		sleep 0.25
	done >>"$OUT/sampler.out") &
	SPID=$!
}
metrics() { # GET /metrics from stickyd's admin API, with bash alone
	exec 3<>/dev/tcp/127.0.0.1/$ADMIN || return
	printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$ADMIN" >&3
	cat <&3
	exec 3<&-
}
unsample() { [ -n "$SPID" ] && { kill "$SPID"; wait "$SPID" 2>/dev/null; }; }

for K in $KS; do
	rest="$K-$LAST"
	taskset -c "$rest" ./lg backend -listen "$BP" >"$OUT/backend.log" 2>&1 &
	BPID=$!
	sleep 0.3
	for name in ${PROXIES:-stickyd stickyd-fixedP haproxy nginx}; do
		start_proxy "$name" "$K" || continue
		sample "$name"
		taskset -c "$rest" ./lg rate -target 127.0.0.1:$PORT -c $((K * 64)) -d 5s -warmup 1s -pid "$PP" >"$OUT/r.out" 2>&1
		unsample
		line "$K" "$name" rate "$OUT/r.out"
		for r in $RATES; do
			sample "$name"
			taskset -c "$rest" ./lg open -target 127.0.0.1:$PORT -rate "$r" -d 4s -warmup 1s -pid "$PP" >"$OUT/o.out" 2>&1
			unsample
			line "$K" "$name" "open$r" "$OUT/o.out"
		done
		if [[ ${CHAT:-0} == 1 ]]; then
			sample "$name"
			taskset -c "$rest" ./lg chat -target 127.0.0.1:$PORT -n $((K * 100)) -open-rate 200 -d 4s -pid "$PP" >"$OUT/c.out" 2>&1
			unsample
			line "$K" "$name" chat "$OUT/c.out"
		fi
		stop_proxy
	done
	kill "$BPID"; wait "$BPID" 2>/dev/null
done
echo "== done"
