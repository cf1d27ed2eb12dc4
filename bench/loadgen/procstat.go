package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicksPerSecond is USER_HZ, the unit of utime and stime in
// /proc/<pid>/stat. It is 100 on every Linux architecture Go supports.
const clockTicksPerSecond = 100

// procSample is one reading of a proxy's processes (a root pid and all of its
// descendants) plus the machine-wide slab size.
type procSample struct {
	Pids     int   // processes found
	CPUTicks int64 // utime+stime summed over the processes
	RSSKB    int64 // VmRSS summed
	PssKB    int64 // Pss (smaps_rollup) summed
	FDs      int64 // entries in /proc/<pid>/fd summed
	SlabKB   int64 // /proc/meminfo Slab, machine-wide
}

// sampleTree reads root and its descendants. It fails only if root itself
// cannot be read; descendants that exit while being read are skipped.
func sampleTree(root int) (procSample, error) {
	var s procSample
	pids, err := treePids(root)
	if err != nil {
		return s, err
	}
	for _, pid := range pids {
		ticks, err := cpuTicks(pid)
		if err != nil {
			if pid == root {
				return s, err
			}
			continue
		}
		s.Pids++
		s.CPUTicks += ticks
		s.RSSKB += statusKB(pid, "VmRSS:")
		s.PssKB += rollupKB(pid, "Pss:")
		s.FDs += countFDs(pid)
	}
	s.SlabKB = meminfoKB("Slab:")
	return s, nil
}

// cpuTicksTree is the cheap variant of sampleTree for CPU-only scenarios.
func cpuTicksTree(root int) (int64, error) {
	pids, err := treePids(root)
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, pid := range pids {
		t, err := cpuTicks(pid)
		if err != nil {
			if pid == root {
				return 0, err
			}
			continue
		}
		sum += t
	}
	return sum, nil
}

// treePids returns root followed by every live descendant of root.
func treePids(root int) ([]int, error) {
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", root)); err != nil {
		return nil, fmt.Errorf("proxy pid %d: %w", root, err)
	}
	children := map[int][]int{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := statFields(pid)
		if err != nil || len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out, nil
}

// statFields returns the fields of /proc/<pid>/stat after the command name,
// so index 0 is the state, 1 the ppid, 11 utime and 12 stime.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// cpuTicks is utime+stime of pid (all of its threads), in clock ticks.
func cpuTicks(pid int) (int64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return u + s, nil
}

func statusKB(pid int, key string) int64 {
	return fileKB(fmt.Sprintf("/proc/%d/status", pid), key)
}

func rollupKB(pid int, key string) int64 {
	return fileKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), key)
}

func meminfoKB(key string) int64 { return fileKB("/proc/meminfo", key) }

// fileKB returns the number on the first line of path that starts with key
// ("VmRSS:   1234 kB"), or 0 if there is none.
func fileKB(path, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	return parseKB(bufio.NewScanner(f), key)
}

func parseKB(sc *bufio.Scanner, key string) int64 {
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, key) {
			continue
		}
		fields := strings.Fields(line[len(key):])
		if len(fields) == 0 {
			return 0
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		return n
	}
	return 0
}

func countFDs(pid int) int64 {
	entries, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return 0
	}
	return int64(len(entries))
}
