package daemon

import (
	"os"
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
