// Package probe measures a service from a lab host the way its clients see
// it: a new TCP connection and one HTTP request at a fixed period, recording
// which backend answered and how long the service was out.
package probe

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Result is one probe.
type Result struct {
	At      time.Time
	OK      bool
	Backend string
	Err     string
}

// DialFunc opens a connection from the probing host.
type DialFunc func(ctx context.Context, addr string) (net.Conn, error)

// Prober sends one request every Period to Addr until stopped.
type Prober struct {
	Addr    string
	Period  time.Duration
	Timeout time.Duration
	Dial    DialFunc

	mu       sync.Mutex
	results  []Result
	cancel   context.CancelFunc
	done     chan struct{}
	inFlight sync.WaitGroup
}

// Start begins probing.
func (p *Prober) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		t := time.NewTicker(p.Period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.inFlight.Add(1)
				go p.once()
			}
		}
	}()
}

// Stop ends probing and waits for the probes in flight, so that a slow
// failure is never missed.
func (p *Prober) Stop() {
	p.cancel()
	<-p.done
	p.inFlight.Wait()
}

func (p *Prober) once() {
	defer p.inFlight.Done()
	r := Result{At: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
	defer cancel()
	c, err := p.Dial(ctx, p.Addr)
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(p.Timeout))
		r.Backend, err = get(c)
		c.Close()
	}
	if err != nil {
		r.Err = err.Error()
	} else {
		r.OK = true
	}
	p.mu.Lock()
	p.results = append(p.results, r)
	p.mu.Unlock()
}

// get sends one HTTP/1.0 request and returns the body's first line: the lab
// backends answer with their name.
func get(c net.Conn) (string, error) {
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\nHost: vip\r\n\r\n")); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	if !strings.Contains(status, " 200 ") {
		return "", fmt.Errorf("status %q", strings.TrimSpace(status))
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.TrimSpace(line) == "" {
			break
		}
	}
	body, _ := br.ReadString('\n')
	return strings.TrimSpace(body), nil
}

// Results returns the probes so far, in start order.
func (p *Prober) Results() []Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := append([]Result(nil), p.results...)
	sortByTime(out)
	return out
}

func sortByTime(rs []Result) {
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j].At.Before(rs[j-1].At); j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
}

// Outage is the longest time, after since, between the start of a failed
// probe run and the next successful probe; failures counts failed probes.
func Outage(rs []Result, since time.Time) (longest time.Duration, failures int) {
	var firstFail time.Time
	for _, r := range rs {
		if r.At.Before(since) {
			continue
		}
		if !r.OK {
			failures++
			if firstFail.IsZero() {
				firstFail = r.At
			}
			continue
		}
		if !firstFail.IsZero() {
			longest = max(longest, r.At.Sub(firstFail))
			firstFail = time.Time{}
		}
	}
	if !firstFail.IsZero() && len(rs) > 0 {
		longest = max(longest, rs[len(rs)-1].At.Sub(firstFail))
	}
	return longest, failures
}

// LastOK is nil when the last n probes, in start order, succeeded.
func (p *Prober) LastOK(n int) error {
	rs := p.Results()
	if len(rs) < n {
		return fmt.Errorf("%d probes so far", len(rs))
	}
	for _, r := range rs[len(rs)-n:] {
		if !r.OK {
			return fmt.Errorf("probe failed: %s", r.Err)
		}
	}
	return nil
}
