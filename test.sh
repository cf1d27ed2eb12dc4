#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, builds
# stickyd exactly as the README does, and runs every test with the race
# detector. Usage: ./test.sh  (CI runs it through .ci/run)
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== %s\n' "$*"; }

log "go $(go version | awk '{print $3}')"
go mod download

log "build (go build -o stickyd .)"
go build -o stickyd .
go vet ./...
if [ -n "$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" ]; then
  echo "gofmt would change:"; gofmt -l .; exit 1
fi

log "tests (go test -race -shuffle=on)"
go test -race -shuffle=on -count=1 -timeout 20m ./...
