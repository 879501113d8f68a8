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
// Each time an entry's lastUpdateTime changes, the manager sees it a moment
// after the agent wrote it, so the skew is the least difference seen between
// the manager's clock at that moment and the timestamp. The first sighting of
// an entry, by a manager that has just started, counts it as fresh: an entry
// of an agent that stopped long before is then removed one AgentStaleAfter
// later, not at once. Like the node lifecycle controller, which times node
// leases by its own clock, the manager needs no clock agreement with the nodes.
type clockSkews struct {
	mu     sync.Mutex
	byPair map[types.NamespacedName]map[string]sighting
}

// sighting is the last lastUpdateTime seen in a node's entry, and the least
// skew seen so far.
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
		switch lag := now.Sub(update); {
		case !known:
			s = sighting{update: update, skew: lag}
		case !update.Equal(s.update):
			s.update, s.skew = update, min(s.skew, lag)
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
