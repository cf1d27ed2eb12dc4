package daemon

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// writePIDFile writes this process's id to path ("" = none) and returns
// it, for removePIDFile.
func writePIDFile(path string, log *zap.Logger) int {
	if path == "" {
		return 0
	}
	pid := os.Getpid()
	tmp := path + ".tmp" + strconv.Itoa(pid)
	err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		log.Error("pid file", zap.String("pid_file", path), zap.Error(err))
	}
	return pid
}

// checkPIDFile fails, as a config error, when path ("" = none) could not
// be written: its directory is missing or not writable. stickyd writes the
// file once it serves; a first start checks beforehand, so that a pid
// file that upgrades and service managers would look for in vain stops
// the start instead of being logged once and missing.
func checkPIDFile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".check*")
	if err != nil {
		return configErrorf("pid_file %s: %v (its directory must exist and be writable by stickyd's user)", path, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// removePIDFile removes path if it still holds pid (after an upgrade it
// holds the new process's).
func removePIDFile(path string, pid int) {
	if path == "" {
		return
	}
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
		os.Remove(path)
	}
}
