# syntax=docker/dockerfile:1
# Build: docker build -t stickyd .
# Run:   docker run --rm -p 3000:3000 stickyd
#        (mount your own config at /etc/stickyd/config.toml)

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
