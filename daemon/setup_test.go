package daemon

import "testing"

// [workers] ipc gives the workers their Node IPC channel unless it is
// "none"; the server gets the per-client limits of the file.
func TestSetupFromConfig(t *testing.T) {
	for src, want := range map[string]bool{``: true, `ipc = "node"`: true, `ipc = "none"`: false} {
		cfg := loadTOML(t, "[workers]\ncommand = [\"true\"]\ncount = 1\n"+src+"\n")
		if got := WorkerConfig(cfg.Workers).NodeIPC; got != want {
			t.Errorf("%q: NodeIPC = %v, want %v", src, got, want)
		}
	}
	cfg := loadTOML(t, "max_connections_per_client = 7\nmax_connection_rate_per_client = 9\n[[backend]]\naddress = \"127.0.0.1:1\"\n")
	if o := serverOptions(cfg, fdBudget{}); o.MaxPerClient != 7 || o.MaxRatePerClient != 9 {
		t.Errorf("server options: per client %d, rate %d; want 7, 9", o.MaxPerClient, o.MaxRatePerClient)
	}
}
