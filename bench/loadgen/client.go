package main

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sourceIPs hands out the addresses of an IPv4 prefix in turn (skipping the
// prefix's own address), so consecutive connections come from different
// loopback addresses. Safe for concurrent use.
type sourceIPs struct {
	base uint32
	size uint32
	next atomic.Uint32
}

func parseSourceIPs(cidr string) (*sourceIPs, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
		return nil, fmt.Errorf("-src %q: want an IPv4 prefix of /30 or wider", cidr)
	}
	a := p.Masked().Addr().As4()
	return &sourceIPs{base: binary.BigEndian.Uint32(a[:]), size: 1 << (32 - p.Bits())}, nil
}

// Next returns the next source address.
func (s *sourceIPs) Next() net.IP {
	i := (s.next.Add(1)-1)%(s.size-1) + 1
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, s.base+i)
	return ip
}

// dialFrom connects to target from src. IP_BIND_ADDRESS_NO_PORT lets the
// kernel pick the port at connect time, per destination, instead of at bind.
func dialFrom(src net.IP, target string, timeout time.Duration) (*net.TCPConn, error) {
	d := net.Dialer{
		LocalAddr: &net.TCPAddr{IP: src},
		Timeout:   timeout,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	c, err := d.Dial("tcp4", target)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// roundTrip sends msg (which must start with cmdEcho) and reads it back.
func roundTrip(c net.Conn, msg, buf []byte) error {
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	if !bytes.Equal(buf[:len(msg)], msg) {
		return fmt.Errorf("echo mismatch")
	}
	return nil
}

// echoMessage returns a size-byte message for cmdEcho.
func echoMessage(size int) []byte {
	msg := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
	msg[0] = cmdEcho
	return msg
}

// clientFlags are the flags shared by the client modes.
type clientFlags struct {
	target string
	src    string
	pid    int
	out    string
	proxy  string
	rep    int
}

func addClientFlags(fs *flag.FlagSet) *clientFlags {
	f := &clientFlags{}
	fs.StringVar(&f.target, "target", "127.0.0.1:8000", "proxy (or backend) address")
	fs.StringVar(&f.src, "src", "127.1.0.0/16", "client source addresses (IPv4 prefix)")
	fs.IntVar(&f.pid, "pid", 0, "proxy pid to sample (with its descendants); 0: none")
	fs.StringVar(&f.out, "out", "", "CSV file to append proxy,rep,metric,value rows to")
	fs.StringVar(&f.proxy, "proxy", "proxy", "proxy name for -out")
	fs.IntVar(&f.rep, "rep", 1, "repetition number for -out")
	return f
}

// exchangeFlags are the flags of the modes that time short connections
// (connect, echo size bytes, close): rate, open and mix.
type exchangeFlags struct {
	dur, warmup, timeout time.Duration
	size                 int
}

// addExchangeFlags defines exchangeFlags on fs, with the mode's defaults
// for the warm-up and the per-connection deadline.
func addExchangeFlags(fs *flag.FlagSet, warmup, timeout time.Duration) *exchangeFlags {
	f := &exchangeFlags{}
	fs.DurationVar(&f.dur, "d", 10*time.Second, "measured duration")
	fs.DurationVar(&f.warmup, "warmup", warmup, "unmeasured warm-up")
	fs.IntVar(&f.size, "size", 64, "bytes sent and received per short connection")
	fs.DurationVar(&f.timeout, "timeout", timeout, "per-connection deadline")
	return f
}

// results collects metric rows and appends them to a CSV file.
type results struct {
	f    *clientFlags
	rows []string
}

func (r *results) add(metric string, v float64) {
	fmt.Printf("  %-26s %s\n", metric, strconv.FormatFloat(v, 'g', 6, 64))
	r.rows = append(r.rows, fmt.Sprintf("%s,%d,%s,%s\n", r.f.proxy, r.f.rep, metric,
		strconv.FormatFloat(v, 'g', 8, 64)))
}

func (r *results) flush() error {
	if r.f.out == "" {
		return nil
	}
	fh, err := os.OpenFile(r.f.out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if st, err := fh.Stat(); err == nil && st.Size() == 0 {
		fh.WriteString("proxy,rep,metric,value\n")
	}
	_, err = fh.WriteString(strings.Join(r.rows, ""))
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	return err
}

// runCheck verifies that the proxy at -target sends a PROXY header carrying
// the client's real address, using the backend's cmdAddr.
func runCheck(args []string) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	target := fs.String("target", "127.0.0.1:8000", "proxy address")
	src := fs.String("src-ip", "127.1.2.3", "client source address")
	want := fs.Int("want-version", 0, "required PROXY version (1 or 2); 0: either")
	timeout := fs.Duration("timeout", 3*time.Second, "deadline for the whole check")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := dialFrom(net.ParseIP(*src), *target, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(*timeout))
	if _, err := c.Write([]byte{cmdAddr}); err != nil {
		return err
	}
	line, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	got := strings.TrimSpace(string(line))
	fields := strings.Fields(got)
	if len(fields) != 3 || fields[1] != c.LocalAddr().String() {
		return fmt.Errorf("backend saw %q, want source %v", got, c.LocalAddr())
	}
	if *want != 0 && fields[0] != fmt.Sprintf("v%d", *want) {
		return fmt.Errorf("backend saw %q, want PROXY v%d", got, *want)
	}
	fmt.Println("check ok:", got)
	return nil
}
