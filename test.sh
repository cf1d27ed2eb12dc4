#!/usr/bin/env bash
# The test command. On a fresh machine it installs what the tests need
# (HAProxy, nginx with the stream module, Node packages for the socket.io
# proof), builds stickyd exactly as the README does, and runs every test with
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
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- set-up: Node packages for the socket.io tests ----------------------------
# examples/socketio is the app the integration tests launch as workers.
if [ ! -d examples/socketio/node_modules/socket.io-client ]; then
  log "npm install in examples/socketio"
  (cd examples/socketio && npm install --no-audit --no-fund --loglevel=error)
fi

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

log "node --test examples/socketio"
(cd examples/socketio && node --test)

# --- fuzzing: each target for a short fixed time ---------------------------------
FUZZTIME=${FUZZTIME:-10s}
if [ "$FUZZTIME" != 0 ]; then
  for pkg in $(go list ./...); do
    for target in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
      log "fuzz $pkg $target ($FUZZTIME)"
      go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg"
    done
  done
fi
log "all tests passed"
