// Package faultnet is a TCP proxy that cuts connections on demand, in the middle of a request or a response, for fault-injection tests against real servers.
package faultnet

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Plan decides what happens to one proxied connection. A zero Plan passes
// everything through.
type Plan struct {
	// CutUp and CutDown, when positive, reset the connection (RST, as a
	// crashed peer or a middlebox does) after that many bytes went from
	// the client to the server, or back.
	CutUp, CutDown int64
	// Stall holds the first bytes of the response back that long, as an
	// overloaded server or a lossy network does.
	Stall time.Duration
}

// Proxy forwards connections from its listener to a target address,
// applying the Plan that Decide returns for each new connection.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	decide func(conn int) Plan
	conns  []net.Conn

	accepted atomic.Int64
	cuts     atomic.Int64
	stalls   atomic.Int64
	wg       sync.WaitGroup
}

// Listen starts a proxy on a free loopback port in front of target.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetPlan makes decide choose the Plan of every new connection (n counts
// connections from 1); nil passes everything through.
func (p *Proxy) SetPlan(decide func(n int) Plan) {
	p.mu.Lock()
	p.decide = decide
	p.mu.Unlock()
}

// ResetAll cuts every open connection now, wherever its requests and
// responses are, and returns how many it cut.
func (p *Proxy) ResetAll() int {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		reset(c)
	}
	p.cuts.Add(int64(len(conns)))
	return len(conns)
}

// Counts returns how many connections were accepted, cut and stalled.
func (p *Proxy) Counts() (accepted, cuts, stalls int64) {
	return p.accepted.Load(), p.cuts.Load(), p.stalls.Load()
}

// Close stops the proxy and cuts its connections.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.ResetAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		n := int(p.accepted.Add(1))
		p.mu.Lock()
		var plan Plan
		if p.decide != nil {
			plan = p.decide(n)
		}
		p.conns = append(p.conns, c)
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(c, plan)
		}()
	}
}

func (p *Proxy) handle(client net.Conn, plan Plan) {
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		reset(client)
		return
	}
	var once sync.Once
	cut := func() {
		once.Do(func() {
			p.cuts.Add(1)
			reset(client)
			reset(server)
		})
	}
	done := make(chan struct{}, 2)
	go func() {
		pipe(server, client, plan.CutUp, 0, cut)
		done <- struct{}{}
	}()
	go func() {
		if plan.Stall > 0 {
			p.stalls.Add(1)
		}
		pipe(client, server, plan.CutDown, plan.Stall, cut)
		done <- struct{}{}
	}()
	<-done
	// One direction ended: end the other too, as a proxy closing a
	// connection does.
	client.Close()
	server.Close()
	<-done
	p.mu.Lock()
	for i, c := range p.conns {
		if c == client {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
}

// pipe copies src to dst, cutting after limit bytes (when positive) and
// holding the first bytes back for stall.
func pipe(dst, src net.Conn, limit int64, stall time.Duration, cut func()) {
	buf := make([]byte, 32<<10)
	var n int64
	first := true
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if first && stall > 0 {
				time.Sleep(stall)
			}
			first = false
			chunk := buf[:k]
			if limit > 0 && n+int64(k) >= limit {
				chunk = buf[:limit-n]
				dst.Write(chunk)
				cut()
				return
			}
			if _, werr := dst.Write(chunk); werr != nil {
				return
			}
			n += int64(k)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
			}
			return
		}
	}
}

// reset closes c with an RST rather than a FIN, so the peer sees
// "connection reset by peer".
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
