package agent

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/lbpair/lbpair/agent/config"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// lookupTimeout bounds one lookup of a static backend's host name. A cluster
// agent resolves them at every sync, and a sync also delivers endpoint
// changes and deletions: a DNS server that does not answer must not hold
// those back for the resolver's own timeouts (seconds per server and try).
const lookupTimeout = 2 * time.Second

// heldResolver resolves the host names of static backends for a cluster
// agent, which resolves them again at every sync. When a lookup fails it
// answers with the last good answer, as HAProxy's resolvers hold a valid
// one: a DNS outage must not turn a running pair's spec invalid, nor stop an
// agent restarted during it from serving its kept configuration. Answers
// are sorted, so that a DNS server rotating its records does not change the
// backend list at each sync.
type heldResolver struct {
	live config.Resolver
	log  logr.Logger

	mu   sync.Mutex
	held map[string][]netip.Addr
	// failing names the hosts answered from held, to log each change once.
	failing map[string]bool
}

func newHeldResolver(live config.Resolver, log logr.Logger) *heldResolver {
	return &heldResolver{live: live, log: log, held: map[string][]netip.Addr{}, failing: map[string]bool{}}
}

// LookupNetIP implements config.Resolver.
func (r *heldResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	ips, err := r.live.LookupNetIP(ctx, network, host)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil && len(ips) > 0 {
		ips = slices.Clone(ips)
		slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
		ips = slices.Compact(ips)
		if r.failing[host] {
			r.log.Info("Backend host name resolves again", "host", host, "addresses", ips)
			delete(r.failing, host)
		}
		r.held[host] = ips
		return ips, nil
	}
	last, ok := r.held[host]
	if !ok {
		return ips, err
	}
	if !r.failing[host] {
		r.log.Info("Resolving a backend host name failed; keeping its last addresses", "host", host, "addresses", last, "error", err)
		r.failing[host] = true
	}
	return last, nil
}

// answers are the last good answers, by host name.
func (r *heldResolver) answers() map[string][]netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.held)
}

// hold takes answers kept from an earlier run, for hosts not resolved since.
func (r *heldResolver) hold(answers map[string][]netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for host, ips := range answers {
		if _, ok := r.held[host]; !ok && len(ips) > 0 {
			r.held[host] = ips
		}
	}
}

// keepOnly forgets the answers for host names no longer in use: a name taken
// out of the spec and put back weeks later, while its lookups fail, must make
// the spec invalid rather than bring back the addresses it had then.
func (r *heldResolver) keepOnly(hosts map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	maps.DeleteFunc(r.held, func(host string, _ []netip.Addr) bool { return !hosts[host] })
	maps.DeleteFunc(r.failing, func(host string, _ bool) bool { return !hosts[host] })
}

// staticHosts are the host names (not addresses) of the spec's static backends.
func staticHosts(spec *lbv1.LoadBalancerPairSpec) map[string]bool {
	hosts := map[string]bool{}
	for _, p := range spec.Ports {
		for _, b := range p.Backend.Static {
			if host, _, err := net.SplitHostPort(b.Address); err == nil {
				if _, err := netip.ParseAddr(host); err != nil {
					hosts[host] = true
				}
			}
		}
	}
	return hosts
}
