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
// agent that stopped long before is removed one AgentStaleAfter later.
type clockSkews struct {
	mu     sync.Mutex
	byPair map[types.NamespacedName]map[string]sighting
}

// sighting is the last lastUpdateTime seen in a node's entry, and the skew
// read when the manager first saw it.
type sighting struct {
	update time.Time
	skew   time.Duration
}

// observe records the entries of a pair at now, by the manager's clock, and
// returns each node's skew: what to add to its timestamps to read them by the
// manager's clock. Nodes without an entry are forgotten.
func (c *clockSkews) observe(pair types.NamespacedName, agents []lbv1.AgentStatus, now time.Time) map[string]time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byPair == nil {
		c.byPair = map[types.NamespacedName]map[string]sighting{}
	}
	old := c.byPair[pair]
	seen := make(map[string]sighting, len(agents))
	skews := make(map[string]time.Duration, len(agents))
	for _, a := range agents {
		update := a.LastUpdateTime.Time
		s, known := old[a.Node]
		if !known || !update.Equal(s.update) {
			s = sighting{update: update, skew: now.Sub(update)}
		}
		seen[a.Node], skews[a.Node] = s, s.skew
	}
	c.byPair[pair] = seen
	return skews
}

// forget drops a deleted pair's sightings.
func (c *clockSkews) forget(pair types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.byPair, pair)
}
