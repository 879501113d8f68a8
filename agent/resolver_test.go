package agent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// scriptedResolver answers each lookup with the next of its answers.
type scriptedResolver struct {
	answers []scriptedAnswer
	// deadlines records how far ahead each lookup's deadline was.
	deadlines []time.Duration
}

type scriptedAnswer struct {
	ips []netip.Addr
	err error
}

func (s *scriptedResolver) LookupNetIP(ctx context.Context, _, _ string) ([]netip.Addr, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		s.deadlines = append(s.deadlines, -1)
	} else {
		s.deadlines = append(s.deadlines, time.Until(dl))
	}
	a := s.answers[0]
	s.answers = s.answers[1:]
	return a.ips, a.err
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestHeldResolver(t *testing.T) {
	timeout := errors.New("i/o timeout")
	live := &scriptedResolver{answers: []scriptedAnswer{
		{err: timeout}, // nothing held yet
		{ips: addrs("198.18.1.12", "198.18.1.11", "198.18.1.12")},
		{ips: addrs("198.18.1.11", "198.18.1.12")},
		{err: timeout},
		{err: timeout},
		{ips: addrs("198.18.1.13")},
	}}
	var lines []string
	log := funcr.New(func(_, args string) { lines = append(lines, args) }, funcr.Options{})
	r := newHeldResolver(live, log)
	ctx := context.Background()

	if _, err := r.LookupNetIP(ctx, "ip", "web01.example"); !errors.Is(err, timeout) {
		t.Errorf("first lookup failing: %v, want the failure", err)
	}
	for i, want := range [][]netip.Addr{
		addrs("198.18.1.11", "198.18.1.12"), // sorted, once each
		addrs("198.18.1.11", "198.18.1.12"),
		addrs("198.18.1.11", "198.18.1.12"), // held
		addrs("198.18.1.11", "198.18.1.12"), // held
		addrs("198.18.1.13"),
	} {
		got, err := r.LookupNetIP(ctx, "ip", "web01.example")
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("lookup %d: %v, %v; want %v", i+2, got, err, want)
		}
	}
	if len(lines) != 2 || !strings.Contains(lines[0], "keeping its last addresses") || !strings.Contains(lines[1], "resolves again") {
		t.Errorf("log: %q, want one line when the lookups fail and one when they work again", lines)
	}
	for i, d := range live.deadlines {
		if d <= 0 || d > lookupTimeout {
			t.Errorf("lookup %d had %v to answer, want at most %v", i+1, d, lookupTimeout)
		}
	}
	if got := r.answers()["web01.example"]; !slices.Equal(got, addrs("198.18.1.13")) {
		t.Errorf("answers: %v", got)
	}
	// Kept answers fill in only for hosts this run has not resolved.
	r.hold(map[string][]netip.Addr{"web01.example": addrs("198.18.1.99"), "web02.example": addrs("198.18.1.21")})
	if got := r.answers(); !slices.Equal(got["web01.example"], addrs("198.18.1.13")) || !slices.Equal(got["web02.example"], addrs("198.18.1.21")) {
		t.Errorf("answers after hold: %v", got)
	}
}

// A host name taken out of the spec is forgotten: put back while its lookups
// fail, it makes the spec invalid rather than bring back its old addresses.
func TestHeldResolverForgetsHostsOutOfTheSpec(t *testing.T) {
	timeout := errors.New("i/o timeout")
	live := &scriptedResolver{answers: []scriptedAnswer{
		{ips: addrs("198.18.1.11")},
		{ips: addrs("198.18.1.12")},
		{err: timeout},
		{err: timeout},
	}}
	r := newHeldResolver(live, logr.Discard())
	ctx := context.Background()
	for _, host := range []string{"web01.example", "web02.example"} {
		if _, err := r.LookupNetIP(ctx, "ip", host); err != nil {
			t.Fatal(err)
		}
	}
	spec := &lbv1.LoadBalancerPairSpec{Ports: []lbv1.PortSpec{{Backend: lbv1.BackendSpec{Static: []lbv1.StaticBackend{
		{Address: "web02.example:80"}, {Address: "198.18.1.20:80"}, {Address: "[fd00:198:18:1::20]:80"},
	}}}}}
	hosts := staticHosts(spec)
	if len(hosts) != 1 || !hosts["web02.example"] {
		t.Errorf("static hosts %v, want web02.example only", hosts)
	}
	r.keepOnly(hosts)

	if got, err := r.LookupNetIP(ctx, "ip", "web02.example"); err != nil || !slices.Equal(got, addrs("198.18.1.12")) {
		t.Errorf("web02.example, in the spec, failing: %v, %v; want its held address", got, err)
	}
	if got, err := r.LookupNetIP(ctx, "ip", "web01.example"); !errors.Is(err, timeout) {
		t.Errorf("web01.example, put back while failing: %v, %v; want the failure, not its old addresses", got, err)
	}
}
