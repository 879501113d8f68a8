package controllers

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// clockSkews estimates, per pair and node, how far an agent's clock is behind
// the manager's. Agents stamp their entries with their own clock; a node whose
// clock is minutes off must not look silent, or gone, for that alone, nor seem
// to have taken over before another master did.
//
// An agent writes its entry only while it runs, so an entry that changed was
// written a moment ago: the skew is the difference between the manager's
// clock when it sees an entry change and the entry's lastUpdateTime. An entry
// is thus timed from when the manager last saw it change, by the manager's
// clock, as the node lifecycle controller times node leases; a node whose
// clock steps is followed at its next write. The first sighting of an entry,
// by a manager that has just started, counts it as fresh: an entry of an
// agent that stopped long before is removed one AgentStaleAfter later. Such
// an entry is unseen (see agentClock) until it changes.
type clockSkews struct {
	mu     sync.Mutex
	byPair map[types.NamespacedName]map[string]sighting
}

// sighting is the last lastUpdateTime seen in a node's entry, and what the
// manager read of the node's clock when it first saw it.
type sighting struct {
	update time.Time
	clock  agentClock
}

// agentClock is what the manager knows of an agent's clock: skew is what to
// add to the agent's timestamps to read them by the manager's clock. unseen
// is set for an entry the manager found when it started, and has not seen
// change since: it may be minutes old, whatever its timestamp says, as the
// entry of a master that died with the manager's previous leader.
type agentClock struct {
	skew   time.Duration
	unseen bool
}

// observe records the entries of a pair at now, by the manager's clock, and
// returns each node's clock. Nodes without an entry are forgotten. An entry
// that appears for a pair the manager already follows was just written.
func (c *clockSkews) observe(pair types.NamespacedName, agents []lbv1.AgentStatus, now time.Time) map[string]agentClock {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byPair == nil {
		c.byPair = map[types.NamespacedName]map[string]sighting{}
	}
	old, following := c.byPair[pair]
	seen := make(map[string]sighting, len(agents))
	clocks := make(map[string]agentClock, len(agents))
	for _, a := range agents {
		update := a.LastUpdateTime.Time
		s, known := old[a.Node]
		if !known || !update.Equal(s.update) {
			s = sighting{update: update, clock: agentClock{skew: now.Sub(update), unseen: !known && !following}}
		}
		seen[a.Node], clocks[a.Node] = s, s.clock
	}
	c.byPair[pair] = seen
	return clocks
}

// forget drops a deleted pair's sightings.
func (c *clockSkews) forget(pair types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.byPair, pair)
}
