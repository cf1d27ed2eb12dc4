package admin

import (
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"go.uber.org/zap"
)

// Access says who may use the admin API (Protect).
type Access struct {
	// Token, when set, must be sent as "Authorization: Bearer TOKEN" with
	// every state-changing request (any method but GET and HEAD: drain and
	// enable) and with GET /clients, which shows client addresses. Other
	// reads (metrics, health, backends, lookup) stay open, so that scrapers
	// and probes need no secret.
	Token string
	// LoopbackHost refuses requests whose Host names anything but a
	// loopback address or localhost. Set it for a loopback listener: a web
	// page that rebinds its own DNS name to 127.0.0.1 sends that name.
	LoopbackHost bool
}

// Protect wraps the admin handler h with the checks of a. Refusals are
// logged (warn, with the cause) and answered with a one-line body.
func Protect(h http.Handler, a Access, log *zap.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.LoopbackHost && !loopbackHost(r.Host) {
			refuse(w, r, log, http.StatusForbidden, "bad_host",
				fmt.Sprintf("Host %q refused: this admin listener is on loopback and answers only localhost or a loopback address (DNS rebinding protection)", clip(r.Host, 64)))
			return
		}
		if a.Token != "" && !tokenOK(r, a.Token) {
			why := ""
			switch {
			case r.Method != http.MethodGet && r.Method != http.MethodHead:
				why = "this call changes state"
			case r.URL.Path == "/clients":
				why = "this call shows client addresses"
			}
			if why != "" {
				w.Header().Set("WWW-Authenticate", `Bearer realm="stickyd admin"`)
				refuse(w, r, log, http.StatusUnauthorized, "bad_token", why+" and needs the admin token: Authorization: Bearer <token>")
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func refuse(w http.ResponseWriter, r *http.Request, log *zap.Logger, status int, cause, msg string) {
	log.Warn("admin request refused", zap.String("cause", cause), zap.String("remote", r.RemoteAddr),
		zap.String("method", r.Method), zap.String("path", clip(r.URL.Path, 64)), zap.String("host", clip(r.Host, 64)))
	http.Error(w, msg, status)
}

func tokenOK(r *http.Request, token string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(token)) == 1
}

// loopbackHost reports whether a Host header value names this machine's
// loopback: localhost, or a loopback IP, with or without a port. An empty
// Host (HTTP/1.0) is accepted: browsers always send one.
func loopbackHost(hostport string) bool {
	if hostport == "" {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// clip bounds what an error body or a log line repeats of a request.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
