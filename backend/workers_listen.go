package backend

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// listeningAddrs lists the TCP addresses on which the processes of group
// pgid listen, such as "127.0.0.1:8080" or "[::]:3000", read from /proc: a
// worker that is not ready is told apart from one that listens on the wrong
// port. Nil when it listens nowhere or /proc cannot tell.
func listeningAddrs(pgid int) []string {
	inodes := groupSocketInodes(pgid)
	if len(inodes) == 0 {
		return nil
	}
	var out []string
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		out = append(out, listenersIn(table, inodes)...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// groupSocketInodes returns the inodes of the sockets that the processes
// of group pgid hold.
func groupSocketInodes(pgid int) map[string]bool {
	procs, _ := os.ReadDir("/proc")
	inodes := make(map[string]bool)
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || processGroup(pid) != pgid {
			continue
		}
		dir := filepath.Join("/proc", p.Name(), "fd")
		fds, _ := os.ReadDir(dir)
		for _, fd := range fds {
			target, _ := os.Readlink(filepath.Join(dir, fd.Name()))
			if inode, ok := strings.CutPrefix(target, "socket:["); ok {
				inodes[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	return inodes
}

// processGroup returns pid's process group, or -1.
func processGroup(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	_, after, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(after) // state, ppid, pgrp, ...
	if len(f) < 3 {
		return -1
	}
	g, err := strconv.Atoi(f[2])
	if err != nil {
		return -1
	}
	return g
}

// listenersIn returns the listening addresses in a /proc/net/tcp{,6}
// table whose socket inode is in inodes.
func listenersIn(table string, inodes map[string]bool) []string {
	f, err := os.Open(table)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] {
			continue
		}
		if ap, ok := parseProcAddr(fields[1]); ok {
			out = append(out, ap.String())
		}
	}
	return out
}

// parseProcAddr parses /proc/net/tcp's "0100007F:0BB9": the address as
// 32-bit words in host (little-endian) order, then the port in hex.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(hexIP)
	port, perr := strconv.ParseUint(hexPort, 16, 16)
	if !ok || err != nil || perr != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip, uint16(port)), true
}
