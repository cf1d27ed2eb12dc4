package main

import (
	"fmt"
	"net"
	"strings"
)

// printFreePorts holds n listeners open at once (so the ports differ), prints
// their ports and closes them. Another process may take a port before the
// caller binds it; run.sh fails clearly if that happens.
func printFreePorts(n int) error {
	var ports []string
	for range n {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		ports = append(ports, fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	}
	fmt.Println(strings.Join(ports, " "))
	return nil
}
