package integration_test

// Flags and their environment twins.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Every new flag has an environment twin, and a bad value is an error
// naming the flag (exit 2).
func TestOpsEnvTwinsValidated(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.toml")
	os.WriteFile(path, []byte("[[backend]]\naddress = \"127.0.0.1:1\"\n"), 0o644)
	bad := map[string]string{
		"STICKYD_HEALTH_CHECK": "icmp", "STICKYD_HEALTH_INTERVAL": "1ms", "STICKYD_HEALTH_TIMEOUT": "1h",
		"STICKYD_HEALTH_RISE": "-1", "STICKYD_HEALTH_FALL": "-1", "STICKYD_HEALTH_PATH": "nope",
		"STICKYD_HEALTH_EXPECT_STATUS": "7", "STICKYD_HEALTH_SEND_PROXY": "v7", "STICKYD_HEALTH_COOLDOWN": "-1s",
		"STICKYD_HEALTH_EJECT_AFTER": "-1", "STICKYD_DNS_SERVER": "nope", "STICKYD_DNS_INTERVAL": "1ms",
		"STICKYD_MAX_CONNECTIONS_PER_CLIENT": "-1", "STICKYD_MAX_CONNECTION_RATE_PER_CLIENT": "-1",
	}
	for env, v := range bad {
		flag := "--" + strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(env, "STICKYD_")), "_", "-")
		cmd := exec.Command(stickydBin, "check-config", path)
		cmd.Env = append(os.Environ(), env+"="+v)
		out, err := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); err == nil || code != 2 || !strings.Contains(string(out), flag) {
			t.Errorf("%s=%s: exit %d, output %q; want exit 2 naming %s", env, v, code, out, flag)
		}
	}
	cmd := exec.Command(stickydBin, "check-config", path)
	cmd.Env = append(os.Environ(), "STICKYD_HEALTH_CHECK=http", "STICKYD_HEALTH_PATH=/ready",
		"STICKYD_HEALTH_INTERVAL=1s", "STICKYD_DNS_SERVER=127.0.0.1:53", "STICKYD_PID_FILE="+filepath.Join(dir, "pid"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("valid environment: %v %s", err, out)
	}
}
