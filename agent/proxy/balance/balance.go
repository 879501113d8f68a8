// Package balance chooses a backend for each new connection. It is pure logic: the
// caller says which backends are usable and how loaded they are through callbacks, so the
// policies are tested without sockets or clocks.
package balance

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
)

// Policy names a balancing policy.
type Policy int

const (
	// RoundRobin is smooth weighted round robin (as nginx's): over a cycle each backend
	// gets its weight's share, interleaved rather than in bursts.
	RoundRobin Policy = iota
	// LeastConnections picks the backend with the fewest active connections per unit of
	// weight, starting the scan at a rotating offset so ties spread out.
	LeastConnections
	// RandomTwoChoices draws two backends at random (weighted) and picks the less loaded,
	// which avoids the herd that least connections sends to a fresh backend.
	RandomTwoChoices
	// SourceHash maps the client address to a backend by weighted rendezvous hashing:
	// adding or removing a backend moves only the clients that must move.
	SourceHash
)

// String returns the policy's name as the API spells it.
func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "RoundRobin"
	case LeastConnections:
		return "LeastConnections"
	case RandomTwoChoices:
		return "RandomTwoChoices"
	case SourceHash:
		return "SourceHash"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// Backend is what a balancer knows of one backend.
type Backend struct {
	// Key identifies the backend for hashing (its address), so a client maps to the same
	// backend whatever the order of the list.
	Key string
	// Weight is the backend's share, at least 1.
	Weight int
}

// Balancer picks backends by index into the list it was built with.
type Balancer interface {
	// Pick returns the index of the backend for a new connection from the client
	// identified by clientKey (its address bytes; only SourceHash uses it), choosing among
	// the backends for which usable returns true; load returns a backend's active
	// connection count. It returns -1 when no backend is usable. Safe for concurrent use.
	Pick(clientKey []byte, usable func(int) bool, load func(int) int64) int
}

// New builds a balancer for the policy over backends. rnd seeds RandomTwoChoices and the
// tie-breaking of LeastConnections; nil means a random seed.
func New(p Policy, backends []Backend, rnd *rand.Rand) (Balancer, error) {
	for i, b := range backends {
		if b.Weight < 1 {
			return nil, fmt.Errorf("backend %d (%q): weight %d must be at least 1", i, b.Key, b.Weight)
		}
	}
	if rnd == nil {
		rnd = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	weights := make([]int, len(backends))
	total := 0
	for i, b := range backends {
		weights[i] = b.Weight
		total += b.Weight
	}
	switch p {
	case RoundRobin:
		return &roundRobin{weights: weights, current: make([]int, len(backends))}, nil
	case LeastConnections:
		return &leastConn{weights: weights}, nil
	case RandomTwoChoices:
		return &twoChoices{weights: weights, total: total, rnd: rnd}, nil
	case SourceHash:
		return newRendezvous(backends), nil
	}
	return nil, fmt.Errorf("unknown balancing policy %d", int(p))
}

// roundRobin is nginx's smooth weighted round robin over the usable backends.
type roundRobin struct {
	mu      sync.Mutex
	weights []int
	current []int
}

func (r *roundRobin) Pick(_ []byte, usable func(int) bool, _ func(int) int64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	best, total := -1, 0
	for i, w := range r.weights {
		if !usable(i) {
			continue
		}
		r.current[i] += w
		total += w
		if best < 0 || r.current[i] > r.current[best] {
			best = i
		}
	}
	if best >= 0 {
		r.current[best] -= total
	}
	return best
}

// leastConn picks the lowest load/weight, scanning from a rotating start for fair ties.
type leastConn struct {
	mu      sync.Mutex
	weights []int
	next    int
}

func (l *leastConn) Pick(_ []byte, usable func(int) bool, load func(int) int64) int {
	n := len(l.weights)
	if n == 0 {
		return -1
	}
	l.mu.Lock()
	start := l.next
	l.next = (l.next + 1) % n
	l.mu.Unlock()
	best := -1
	var bestLoad int64
	for k := range n {
		i := (start + k) % n
		if !usable(i) {
			continue
		}
		ld := load(i)
		// ld/w < bestLoad/bestW without division.
		if best < 0 || ld*int64(l.weights[best]) < bestLoad*int64(l.weights[i]) {
			best, bestLoad = i, ld
		}
	}
	return best
}

// twoChoices draws two distinct usable backends by weight and keeps the less loaded.
type twoChoices struct {
	mu      sync.Mutex
	weights []int
	total   int
	rnd     *rand.Rand
}

func (t *twoChoices) Pick(_ []byte, usable func(int) bool, load func(int) int64) int {
	// Usability is read once per backend: it changes under us (health checks, other
	// loops' connects), and the count and the draws must agree on it, or a draw finds
	// nothing (-1) or a weight the total does not hold.
	var small [128]bool
	ok := small[:0]
	if len(t.weights) > len(small) {
		ok = make([]bool, 0, len(t.weights))
	}
	// Usable weight, and a draw over it, skipping unusable backends.
	total, count, only := 0, 0, -1
	for i, w := range t.weights {
		u := usable(i)
		ok = append(ok, u)
		if u {
			total += w
			count++
			only = i
		}
	}
	switch count {
	case 0:
		return -1
	case 1:
		return only
	}
	t.mu.Lock()
	a := t.draw(total, ok, -1)
	b := t.draw(total-t.weights[a], ok, a)
	t.mu.Unlock()
	la, lb := load(a)*int64(t.weights[b]), load(b)*int64(t.weights[a])
	if lb < la {
		return b
	}
	return a
}

// draw picks a backend other than skip among those usable says are, with probability
// proportional to weight; total is their weight without skip's.
func (t *twoChoices) draw(total int, usable []bool, skip int) int {
	x := t.rnd.IntN(total)
	last := -1
	for i, w := range t.weights {
		if i == skip || !usable[i] {
			continue
		}
		last = i
		if x < w {
			return i
		}
		x -= w
	}
	return last
}

// rendezvous is weighted highest-random-weight hashing: each backend scores each client
// by -w/ln(u) with u a hash of both in (0,1); the top usable score wins. A backend's
// score for a client never depends on the others, so adding or removing one moves only
// the clients it wins or held.
type rendezvous struct {
	seeds   []uint64
	weights []float64
}

func newRendezvous(backends []Backend) *rendezvous {
	r := &rendezvous{seeds: make([]uint64, len(backends)), weights: make([]float64, len(backends))}
	for i, b := range backends {
		r.seeds[i] = fnv64(0xcbf29ce484222325, []byte(b.Key))
		r.weights[i] = float64(b.Weight)
	}
	return r
}

func (r *rendezvous) Pick(clientKey []byte, usable func(int) bool, _ func(int) int64) int {
	best := -1
	var bestScore float64
	ch := fnv64(0xcbf29ce484222325, clientKey)
	for i, seed := range r.seeds {
		if !usable(i) {
			continue
		}
		h := mix64(ch ^ seed)
		// u in (0,1): 53 bits of the hash, never 0.
		u := (float64(h>>11) + 0.5) / (1 << 53)
		score := -r.weights[i] / math.Log(u)
		if best < 0 || score > bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

// fnv64 is FNV-1a: stable across processes and versions, so that every agent of a pair
// maps a client to the same backend.
func fnv64(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= 0x100000001b3
	}
	return h
}

// mix64 is the splitmix64 finaliser, so that similar inputs give unrelated outputs.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
