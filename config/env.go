package config

import (
	"slices"
	"strings"
)

// UnknownEnv is a STICKYD_ variable in the environment that stickyd does
// not read, and the one it was probably meant to be ("" when none is
// close): an environment twin misspelt is otherwise ignored in silence.
type UnknownEnv struct{ Name, Meant string }

// UnknownEnvs returns the STICKYD_ variables of environ (os.Environ's
// form) that are no setting's twin, nor --config's, nor one that stickyd
// sets or reads itself (STICKYD_ADMIN_TOKEN, a worker's STICKYD_WORKER_ID,
// STICKYD_WORKERS and STICKYD_IPC, an upgrade's STICKYD_<NAME>_FD).
func UnknownEnvs(environ []string) []UnknownEnv {
	const prefix = "STICKYD_"
	known := []string{EnvName("config"), EnvAdminToken, "STICKYD_WORKER_ID", "STICKYD_WORKERS", "STICKYD_IPC"}
	for _, s := range settings {
		known = append(known, s.Env())
	}
	for i, k := range known {
		known[i] = strings.TrimPrefix(k, prefix)
	}
	var out []UnknownEnv
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok || slices.Contains(known, rest) || strings.HasSuffix(rest, "_FD") {
			continue
		}
		u := UnknownEnv{Name: name}
		if m := closest(rest, known); m != "" {
			u.Meant = prefix + m
		}
		out = append(out, u)
	}
	return out
}
