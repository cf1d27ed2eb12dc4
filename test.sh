#!/usr/bin/env bash
# The test command. On a fresh machine it installs what the tests need
# (a C compiler for -race, CA certificates, HAProxy, nginx with the stream
# module, Twisted for the Python example, systemd-analyze for the unit file,
# Node packages for the socket.io proof), builds stickyd exactly as the README does, and runs every test with
# the race detector, then each fuzz target for a short fixed time.
# Usage: ./test.sh            (CI runs it through .ci/run)
#        FUZZTIME=0 ./test.sh (skip the fuzz runs)
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== %s\n' "$*"; }

# --- set-up: system packages -------------------------------------------------
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx-light)
ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1 || need+=(libnginx-mod-stream)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v strace >/dev/null || need+=(strace)
command -v systemd-analyze >/dev/null || need+=(systemd)          # checks deploy/systemd/stickyd.service
command -v gcc >/dev/null || need+=(gcc)                      # go test -race needs cgo
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates) # go mod download over https
/usr/bin/python3 -c 'import twisted' 2>/dev/null || need+=(python3-twisted) # examples/python
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# `localhost` must resolve (a relay test dials it); minimal roots may lack /etc/hosts.
if ! getent hosts localhost >/dev/null; then
  log "localhost does not resolve: adding it to /etc/hosts"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' | $SUDO tee -a /etc/hosts >/dev/null
fi

# Node >= 20 (Debian 12's nodejs is 18): say so in one line rather than fail later.
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "node $(node -v) is too old: the Node tests need node >= 20 (Debian 12 ships 18); install Node 20+ (NodeSource's nodejs package or nvm) and rerun"
  exit 1
fi

# --- set-up: Node packages for the socket.io tests ----------------------------
# node/ is the stickyd-worker package; examples/socketio and examples/migrate
# (the apps the integration tests launch as workers) link it. `npm ci`, as
# the Dockerfiles run it: it installs exactly the lockfile, and fails when
# package.json and package-lock.json disagree (which would break the image
# build), instead of rewriting the lockfile as `npm install` would.
for dir in node examples/socketio examples/migrate; do
  if [ ! -e "$dir/node_modules/.package-lock.json" ] || [ "$dir/package.json" -nt "$dir/node_modules/.package-lock.json" ] ||
    [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ] ||
    { [ "$dir" != node ] && [ ! -e "$dir/node_modules/stickyd-worker" ]; }; then
    log "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

# --- build -------------------------------------------------------------------
log "go $(go version | awk '{print $3}')"
go mod download
log "build: go build -o stickyd ."
go build -o stickyd .
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './node_modules/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted"; exit 1
fi

# --- tests -------------------------------------------------------------------
log "go test -race -shuffle=on ./..."
go test -race -shuffle=on -count=1 -timeout 25m ./...

log "node --test node (stickyd-worker)"
(cd node && node --test)

# --- fuzzing: each target for a short fixed time ---------------------------------
# fuzz_one PKG TARGET: one run; a run that fails with Go's own "context
# deadline exceeded" at the end of -fuzztime and wrote no failing input is
# the fuzz coordinator's race (go.dev/issue/75804, fixed in Go 1.27), not a
# finding: it is run again, up to 6 runs in all (the race has come twice in
# a row, on one target, in sessions 19 and 20: about 4% of the runs over
# four CI runs, more on the fastest targets). A failing input always fails
# the run.
fuzz_one() {
  local out rc try
  for try in 1 2 3 4 5 6; do
    rc=0
    out=$(go test -run '^$' -fuzz "^$2\$" -fuzztime "$FUZZTIME" "$1" 2>&1) || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" = 0 ] || ! grep -q 'context deadline exceeded' <<<"$out" || grep -q 'Failing input written' <<<"$out"; then
      return "$rc"
    fi
    log "fuzz $1 $2: Go's fuzz-coordinator deadline race (go.dev/issue/75804), no failing input (run $try of 6)"
  done
  return "$rc"
}
FUZZTIME=${FUZZTIME:-10s}
if [ "$FUZZTIME" != 0 ]; then
  for pkg in $(go list ./...); do
    for target in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
      log "fuzz $pkg $target ($FUZZTIME)"
      fuzz_one "$pkg" "$target"
    done
  done
fi
log "all tests passed"
