// Package dnstest runs a small authoritative DNS server on loopback for
// tests: A, AAAA and SRV records that the test changes while it runs.
//
//	srv := dnstest.New(t) // or dnstest.Start(), then srv.Close()
//	srv.SetHost("app.test.", "127.0.0.2", "127.0.0.3")
//	srv.SetSRV("_app._tcp.test.", dnstest.Target{Host: "app.test.", Port: 8080})
//	r := discovery.NewResolver(srv.Addr)
package dnstest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// Target is one SRV record's target.
type Target struct {
	Host string
	Port uint16
}

// Server answers for the names set on it; every other name is NXDOMAIN.
// It serves UDP and TCP on the same loopback port.
type Server struct {
	// Addr is "127.0.0.1:port", for both UDP and TCP.
	Addr    string
	udp     *dns.Server
	tcp     *dns.Server
	queries atomic.Int64

	mu      sync.Mutex
	records map[string][]dns.RR // by lower-case FQDN; guarded by mu
}

// New is Start for a test: it fails t if the server cannot start, and
// closes the server when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	srv, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// Start listens on a free loopback port and serves until Close.
func Start() (*Server, error) {
	s := &Server{records: make(map[string][]dns.RR)}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		return nil, errors.New("dnstest: no free port for both UDP and TCP")
	}
	s.Addr = pc.LocalAddr().String()
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: ln, Handler: s}
	started := make(chan struct{}, 2)
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		srv.NotifyStartedFunc = func() { started <- struct{}{} }
		go srv.ActivateAndServe()
	}
	<-started
	<-started
	return s, nil
}

// Close stops the server.
func (s *Server) Close() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
}

// Queries returns how many questions the server has answered.
func (s *Server) Queries() int64 { return s.queries.Load() }

// SetHost replaces name's A and AAAA records with ips (none: NXDOMAIN).
func (s *Server) SetHost(name string, ips ...string) {
	name = dns.CanonicalName(name)
	var rrs []dns.RR
	for _, ip := range ips {
		a := netip.MustParseAddr(ip)
		hdr := dns.RR_Header{Name: name, Class: dns.ClassINET, Ttl: 1}
		if a.Is4() {
			hdr.Rrtype = dns.TypeA
			rrs = append(rrs, &dns.A{Hdr: hdr, A: a.AsSlice()})
		} else {
			hdr.Rrtype = dns.TypeAAAA
			rrs = append(rrs, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	s.set(name, rrs)
}

// SetSRV replaces name's SRV records with targets (none: NXDOMAIN).
func (s *Server) SetSRV(name string, targets ...Target) {
	name = dns.CanonicalName(name)
	var rrs []dns.RR
	for _, t := range targets {
		rrs = append(rrs, &dns.SRV{
			Hdr:    dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 1},
			Target: dns.CanonicalName(t.Host), Port: t.Port, Weight: 1,
		})
	}
	s.set(name, rrs)
}

func (s *Server) set(name string, rrs []dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(rrs) == 0 {
		delete(s.records, name)
		return
	}
	s.records[name] = rrs
}

// ServeDNS answers one query (dns.Handler).
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		rrs, known := s.lookup(q.Name)
		if !known {
			m.Rcode = dns.RcodeNameError
			continue
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
		}
	}
	if err := w.WriteMsg(m); err != nil {
		fmt.Println("dnstest: write:", err)
	}
}

func (s *Server) lookup(name string) ([]dns.RR, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rrs, ok := s.records[strings.ToLower(dns.CanonicalName(name))]
	return rrs, ok
}
