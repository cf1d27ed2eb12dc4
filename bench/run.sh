#!/usr/bin/env bash
# bench/run.sh: stickyd vs HAProxy vs nginx stream, all in front of the same
# PROXY-aware backends (bench/loadgen backend). See bench/README.md.
#
#   bench/run.sh                 # full run, ~15 minutes
#   bench/run.sh --quick         # smoke run, ~1-2 minutes
#   bench/run.sh --reps 5 --proxies "haproxy nginx"
#   bench/run.sh --rate-only --reps 6 --proxies "stickyd haproxy"   # A/B of conn/s, p99, CPU/conn
#   bench/run.sh --load-only --reps 3     # A/B of the bulk+short mix, the open-loop rates and chat
#
# The proxy "floor" (bench/floor, in the default list) is a measuring stick,
# not a proxy: it runs the short-connection scenario only.
#
# Writes bench/results/{raw.csv,summary.csv,table.md,mem-per-conn.dat,mem-per-conn.png}
# (--rate-only: bench/results/rate-only/, short connections only, no plot;
# --load-only: bench/results/load-only/, mix, open loop and chat only)
# and prints the table. Idempotent: installs what is missing, rebuilds, and
# starts every process it needs on fresh ports; stops them on exit.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
RATE_ONLY=0
LOAD_ONLY=0
REPS=""
PROXIES="stickyd haproxy nginx floor"
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) QUICK=1 ;;
	--rate-only) RATE_ONLY=1 ;;
	--load-only) LOAD_ONLY=1 ;;
	--reps) REPS="$2"; shift ;;
	--proxies) PROXIES="$2"; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

LEVELS=1000,5000,9000
if [ "$QUICK" = 1 ]; then
	REPS=${REPS:-1} RATE_D=3s WARMUP=0.5s STREAM_BYTES=$((256 << 20)) SETTLE=1s LOAD_D=3s
else
	REPS=${REPS:-5} RATE_D=10s WARMUP=1s STREAM_BYTES=$((2 << 30)) SETTLE=2s LOAD_D=6s
fi
RATE_C=16
# Load scenarios: MIX_BULK endless downloads beside MIX_C short-connection
# workers; open-loop runs at each of OPEN_RATES connections/s; CHAT_N
# long-lived connections, opened at CHAT_OPEN_RATE/s, exchanging messages.
MIX_BULK=60 MIX_C=8 OPEN_RATES="1000 3000" CHAT_N=100 CHAT_OPEN_RATE=50

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH")
RESULTS=$BENCH/results
[ "$RATE_ONLY" = 1 ] && RESULTS=$BENCH/results/rate-only
[ "$LOAD_ONLY" = 1 ] && RESULTS=$BENCH/results/load-only
WORK=$(mktemp -d /tmp/stickyd-bench.XXXXXX)
LG=$WORK/loadgen
BACKEND_PID=""
PROXY_PID=""

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# descendants PID: PID's children, grandchildren, ... (deepest last).
descendants() {
	local c
	for c in $(pgrep -P "$1" || true); do
		echo "$c"
		descendants "$c"
	done
}

# stop_tree PID: SIGTERM, wait up to 5 s, then SIGKILL PID and what it spawned.
stop_tree() {
	local pid=$1 kids i
	kill -0 "$pid" 2>/dev/null || return 0
	kids=$(descendants "$pid")
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	for p in "$pid" $kids; do kill -KILL "$p" 2>/dev/null || true; done
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	[ -n "$PROXY_PID" ] && stop_tree "$PROXY_PID"
	[ -n "$BACKEND_PID" ] && stop_tree "$BACKEND_PID"
	if [ "$rc" = 0 ]; then rm -rf "$WORK"; else log "failed; logs kept in $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_packages() {
	local need=()
	command -v haproxy >/dev/null || need+=(haproxy)
	command -v nginx >/dev/null || need+=(nginx-light)
	[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
	command -v gnuplot >/dev/null || need+=(gnuplot-nox)
	[ ${#need[@]} = 0 ] && return
	log "installing ${need[*]}"
	if [ "$(id -u)" = 0 ]; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	else
		log "not root: install ${need[*]} yourself; continuing without them"
	fi
}

build() {
	log "building loadgen"
	(cd "$REPO" && go build -o "$LG" ./bench/loadgen)
	if [[ " $PROXIES " == *" floor "* ]]; then
		(cd "$REPO" && go build -o "$WORK/floor" ./bench/floor) || log "SKIP floor: it does not build"
	fi
	if [[ " $PROXIES " == *" stickyd "* ]]; then
		log "building stickyd"
		if ! (cd "$REPO" && go build -o "$WORK/stickyd" .) >"$WORK/stickyd-build.log" 2>&1; then
			log "SKIP stickyd: 'go build .' failed in $REPO: $(head -c 300 "$WORK/stickyd-build.log")"
			rm -f "$WORK/stickyd"
		fi
	fi
}

write_configs() {
	cat >"$WORK/haproxy.cfg" <<-EOF
		global
		    maxconn 9500
		    maxpipes 256
		    nbthread 2
		defaults
		    mode tcp
		    maxconn 9500
		    timeout connect 5s
		    timeout client 10m
		    timeout server 10m
		    option splice-auto
		frontend fe
		    bind 127.0.0.1:$PORT_haproxy
		    default_backend be
		backend be
		    balance source
		    hash-type consistent
		    server b0 127.0.0.1:$BP0 send-proxy-v2
		    server b1 127.0.0.1:$BP1 send-proxy-v2
	EOF
	mkdir -p "$WORK/nginx"
	cat >"$WORK/nginx.conf" <<-EOF
		load_module /usr/lib/nginx/modules/ngx_stream_module.so;
		daemon off;
		worker_processes auto;
		worker_rlimit_nofile 20000;
		pid $WORK/nginx.pid;
		error_log $WORK/nginx-error.log warn;
		events { worker_connections 19500; }
		stream {
		    upstream be {
		        hash \$remote_addr consistent;
		        server 127.0.0.1:$BP0;
		        server 127.0.0.1:$BP1;
		    }
		    server {
		        listen 127.0.0.1:$PORT_nginx;
		        proxy_pass be;
		        proxy_protocol on;
		        proxy_connect_timeout 5s;
		        proxy_timeout 10m;
		    }
		}
	EOF
}

# available NAME: whether NAME can be benchmarked at all.
available() {
	case "$1" in
	stickyd) [ -x "$WORK/stickyd" ] ;;
	floor) [ -x "$WORK/floor" ] ;;
	haproxy) command -v haproxy >/dev/null ;;
	nginx) command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] ;;
	*) return 1 ;;
	esac
}

# start_proxy NAME: starts it, sets PROXY_PID, and waits until a connection
# through it reaches a backend with a correct PROXY header.
start_proxy() {
	local name=$1 port=PORT_$1 i
	case "$name" in
	stickyd)
		# From $WORK and without STICKYD_* variables, so that neither a
		# ./config.toml (which may start workers) nor the environment
		# adds to the flags.
		(
			cd "$WORK"
			unset $(compgen -e | grep '^STICKYD_') 2>/dev/null || true
			exec "$WORK/stickyd" --listen "127.0.0.1:${!port}" --backend "b0=127.0.0.1:$BP0" \
				--backend "b1=127.0.0.1:$BP1" --send-proxy v2 --log-level warn
		) >>"$WORK/stickyd.log" 2>&1 &
		;;
	haproxy) haproxy -db -f "$WORK/haproxy.cfg" >>"$WORK/haproxy.log" 2>&1 & ;;
	floor) "$WORK/floor" -listen "127.0.0.1:${!port}" -b0 "127.0.0.1:$BP0" -b1 "127.0.0.1:$BP1" >>"$WORK/floor.log" 2>&1 & ;;
	nginx) nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" >>"$WORK/nginx.log" 2>&1 & ;;
	esac
	PROXY_PID=$!
	local deadline=$((SECONDS + 10))
	while [ "$SECONDS" -lt "$deadline" ]; do
		if ! kill -0 "$PROXY_PID" 2>/dev/null; then
			log "SKIP $name: it exited at start; last log lines:"
			local logf=$WORK/$name.log
			[ "$name" = nginx ] && logf=$WORK/nginx-error.log
			tail -n 5 "$logf" 2>/dev/null | sed 's/^/    /' >&2 || true
			PROXY_PID=""
			return 1
		fi
		if "$LG" check -target "127.0.0.1:${!port}" -timeout 1s >"$WORK/check.out" 2>&1; then
			return 0
		fi
		sleep 0.2
	done
	log "SKIP $name: no correct proxied connection within 10 s: $(cat "$WORK/check.out")"
	stop_proxy
	return 1
}

stop_proxy() {
	[ -n "$PROXY_PID" ] && stop_tree "$PROXY_PID"
	PROXY_PID=""
}

# wait_tw_drain: TIME_WAIT sockets expiring during an idle run would shrink
# the slab reading; wait (at most 70 s) until few are left.
wait_tw_drain() {
	local tw i
	for i in $(seq 70); do
		tw=$(awk '/^TCP:/ { for (i = 1; i < NF; i++) if ($i == "tw") print $(i + 1) }' /proc/net/sockstat)
		[ "$tw" -lt 2000 ] && return
		[ "$i" = 1 ] && log "waiting for $tw TIME_WAIT sockets to expire"
		sleep 1
	done
}

# cpu_idle_pct: percentage of machine CPU time idle over the next 0.5 s.
cpu_idle_pct() {
	local a b
	a=($(head -1 /proc/stat)); sleep 0.5; b=($(head -1 /proc/stat))
	local total=0 i
	for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
	echo $(((b[4] - a[4] + b[5] - a[5]) * 100 / (total > 0 ? total : 1)))
}

# wait_quiet WHAT: the machine is shared; give other work up to 10 s to
# finish before a CPU-bound scenario, and say so if it does not.
wait_quiet() {
	local idle i
	for i in $(seq 20); do
		idle=$(cpu_idle_pct)
		[ "$idle" -ge 85 ] && return
	done
	log "WARNING: machine only ${idle}% idle before $1: other processes skew its numbers"
	BUSY+=" $1"
}

run_idle() {
	local name=$1 rep=$2 port=PORT_$1
	[ "$name" = floor ] && return # rate scenario only
	start_proxy "$name" || { SKIPPED+=" $name"; return; }
	log "$name rep $rep: idle $LEVELS"
	"$LG" idle -target "127.0.0.1:${!port}" -pid "$PROXY_PID" -levels "$LEVELS" -settle "$SETTLE" \
		-out "$RESULTS/raw.csv" -proxy "$name" -rep "$rep" >>"$WORK/client.log" 2>&1 ||
		log "$name rep $rep: idle failed (see $WORK/client.log)"
	stop_proxy
}

run_traffic() {
	local name=$1 rep=$2 port=PORT_$1
	start_proxy "$name" || { SKIPPED+=" $name"; return; }
	wait_quiet "$name rep $rep"
	[ "$LOAD_ONLY" = 1 ] || log "$name rep $rep: rate ${RATE_D} x $RATE_C workers, stream $((STREAM_BYTES >> 20)) MiB each way"
	local common=(-target "127.0.0.1:${!port}" -pid "$PROXY_PID" -out "$RESULTS/raw.csv" -proxy "$name" -rep "$rep")
	if [ "$LOAD_ONLY" = 0 ]; then
		"$LG" rate "${common[@]}" -c "$RATE_C" -d "$RATE_D" -warmup "$WARMUP" >>"$WORK/client.log" 2>&1 ||
			log "$name rep $rep: rate failed (see $WORK/client.log)"
		[ "$name" = floor ] || [ "$RATE_ONLY" = 1 ] || "$LG" stream "${common[@]}" -bytes "$STREAM_BYTES" >>"$WORK/client.log" 2>&1 ||
			log "$name rep $rep: stream failed (see $WORK/client.log)"
	fi
	[ "$RATE_ONLY" = 1 ] || run_load "$name" "$rep" "${common[@]}"
	stop_proxy
}

# run_load NAME REP COMMON...: short connections beside bulk downloads
# (not through the floor, which cannot stream), then the open-loop rates.
run_load() {
	local name=$1 rep=$2 r
	shift 2
	log "$name rep $rep: mix ($MIX_BULK downloads + $MIX_C short workers, $LOAD_D), open loop at $OPEN_RATES/s, chat ($CHAT_N connections)"
	[ "$name" = floor ] || "$LG" mix "$@" -bulk "$MIX_BULK" -c "$MIX_C" -d "$LOAD_D" -warmup 2s >>"$WORK/client.log" 2>&1 ||
		log "$name rep $rep: mix failed (see $WORK/client.log)"
	for r in $OPEN_RATES; do
		"$LG" open "$@" -rate "$r" -d "$LOAD_D" -warmup "$WARMUP" >>"$WORK/client.log" 2>&1 ||
			log "$name rep $rep: open $r/s failed (see $WORK/client.log)"
	done
	[ "$name" = floor ] || "$LG" chat "$@" -n "$CHAT_N" -open-rate "$CHAT_OPEN_RATE" -d "$LOAD_D" >>"$WORK/client.log" 2>&1 ||
		log "$name rep $rep: chat failed (see $WORK/client.log)"
}

# rotate N WORDS...: the words rotated left by N, so each repetition starts
# with a different proxy.
rotate() {
	local n=$1; shift
	local a=("$@") i
	for i in "${!a[@]}"; do printf '%s ' "${a[$(((i + n) % ${#a[@]}))]}"; done
}

# ratios PROXIES...: the table's ratio rows: the first proxy over each other,
# and the floor over the real proxies.
ratios() {
	local first=$1 p out=()
	for p in "${@:2}"; do out+=("$first/$p"); done
	if [[ " $* " == *" floor "* && "$first" != floor ]]; then
		for p in "$@"; do [ "$p" = floor ] || [ "$p" = "$first" ] || out+=("floor/$p"); done
	fi
	(IFS=,; echo "${out[*]}")
}

plot() {
	command -v gnuplot >/dev/null || { log "no gnuplot: skipping the PNG"; return; }
	[ "$LOAD_ONLY" = 1 ] || gnuplot "$RESULTS/mem-per-conn.gp"
	gnuplot "$RESULTS/cpu-per-conn.gp" 2>/dev/null || log "cpu-per-conn plot failed"
}

main() {
	ensure_packages
	build
	read -r BP0 BP1 PORT_stickyd PORT_haproxy PORT_nginx PORT_floor < <("$LG" ports -n 6)
	write_configs
	mkdir -p "$RESULTS"
	rm -rf "$RESULTS/raw.csv" "$RESULTS/logs"

	"$LG" backend -listen "127.0.0.1:$BP0,127.0.0.1:$BP1" >"$WORK/backend.log" 2>&1 &
	BACKEND_PID=$!
	sleep 0.3
	kill -0 "$BACKEND_PID" || { cat "$WORK/backend.log" >&2; exit 1; }

	local run=() p
	for p in $PROXIES; do
		if available "$p"; then run+=("$p"); else log "SKIP $p: not installed or not built"; fi
	done
	[ ${#run[@]} -gt 0 ] || { log "nothing to benchmark"; exit 1; }
	log "proxies: ${run[*]}; $REPS repetition(s); load $(cut -d' ' -f1-3 /proc/loadavg)"

	SKIPPED="" BUSY=""
	local rep
	if [ "$RATE_ONLY" = 1 ] || [ "$LOAD_ONLY" = 1 ]; then
		log "rate or load only: no idle scenario"
	elif [ "$QUICK" = 1 ]; then
		log "quick: not waiting for TIME_WAIT sockets to expire (slab figures are rougher)"
	else
		wait_tw_drain
	fi
	for rep in $(seq "$REPS"); do
		[ "$RATE_ONLY" = 1 ] || [ "$LOAD_ONLY" = 1 ] && break
		for p in $(rotate "$rep" "${run[@]}"); do run_idle "$p" "$rep"; done
	done
	for rep in $(seq "$REPS"); do
		for p in $(rotate "$rep" "${run[@]}"); do run_traffic "$p" "$rep"; done
	done

	stop_tree "$BACKEND_PID"
	BACKEND_PID=""
	grep -h "^backend:" "$WORK/backend.log" >&2 || true

	log "report (median of $REPS; load $(cut -d' ' -f1-3 /proc/loadavg))"
	"$LG" report -in "$RESULTS/raw.csv" -outdir "$RESULTS" -proxies "$(echo $PROXIES | tr ' ' ,)" -levels "$LEVELS" -ratios "$(ratios $PROXIES)" -rates "$(echo $OPEN_RATES | tr ' ' ,)"
	[ "$RATE_ONLY" = 1 ] || plot
	[ -z "$SKIPPED" ] || log "skipped at least once:$(echo "$SKIPPED" | tr ' ' '\n' | sort -u | tr '\n' ' ')"
	[ -z "$BUSY" ] || log "machine was busy before:$BUSY"
	mkdir -p "$RESULTS/logs"
	cp "$WORK"/*.log "$RESULTS/logs/" 2>/dev/null || true
	log "results in $RESULTS (logs in $RESULTS/logs)"
}

main
