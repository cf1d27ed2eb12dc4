# syntax=docker/dockerfile:1
# Build: docker build -t stickyd .
# Run:   docker run --rm -p 3000:3000 stickyd
#        (mount your own config at /etc/stickyd/config.toml; for the admin
#        API add -p 127.0.0.1:9000:9000 -e STICKYD_ADMIN=0.0.0.0:9000)
# integration_test/ops_test.go checks the build line below against test.sh
# and that the binary it makes is static.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The same build command the tests use (test.sh), made static.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o stickyd .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/stickyd /usr/local/bin/stickyd
COPY config.toml /etc/stickyd/config.toml
USER nonroot:nonroot
EXPOSE 3000 9000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/stickyd", "--config", "/etc/stickyd/config.toml"]
