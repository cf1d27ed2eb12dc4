package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"": true, "localhost": true, "LOCALHOST:9000": true, "localhost.:80": true, "127.0.0.1": true,
		"127.9.9.9:1": true, "[::1]:9000": true, "[::ffff:127.0.0.1]:1": true,
		"evil.example": false, "evil.example:9000": false, "localhost.evil.example": false,
		"10.0.0.1:9000": false, "[::2]:1": false, "127.0.0.1.nip.io": false,
	} {
		if got := loopbackHost(host); got != want {
			t.Errorf("loopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}

// With a token, every method but GET and HEAD needs it; reads do not.
func TestProtectToken(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	h := Protect(ok, Access{Token: "t0k"}, zap.NewNop())
	for _, tc := range []struct {
		method, auth string
		want         int
	}{
		{"GET", "", 200}, {"HEAD", "", 200}, {"POST", "", 401}, {"PUT", "", 401}, {"DELETE", "", 401},
		{"POST", "Bearer wrong", 401}, {"POST", "t0k", 401}, {"POST", "Basic t0k", 401}, {"POST", "Bearer t0k", 200},
	} {
		r := httptest.NewRequest(tc.method, "/backends/b1/drain", nil)
		if tc.auth != "" {
			r.Header.Set("Authorization", tc.auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("%s with %q: %d, want %d", tc.method, tc.auth, w.Code, tc.want)
		}
	}
	// POST /reload changes what is in force: the token.
	for auth, want := range map[string]int{"": 401, "Bearer wrong": 401, "Bearer t0k": 200} {
		r := httptest.NewRequest("POST", "/reload", nil)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		if h.ServeHTTP(w, r); w.Code != want {
			t.Errorf("POST /reload with %q: %d, want %d", auth, w.Code, want)
		}
	}
	// GET /clients shows client addresses: the token too.
	for auth, want := range map[string]int{"": 401, "Bearer wrong": 401, "Bearer t0k": 200} {
		r := httptest.NewRequest("GET", "/clients?top=5", nil)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != want || want == 401 && !strings.Contains(w.Body.String(), "shows client addresses") {
			t.Errorf("GET /clients with %q: %d %q, want %d", auth, w.Code, w.Body.String(), want)
		}
	}
}
