package balance

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func all(int) bool         { return true }
func noLoad(int) int64     { return 0 }
func seeded() *rand.Rand   { return rand.New(rand.NewPCG(1, 2)) }
func keys(n int) []Backend { return weighted(make([]int, n)...) }

// weighted makes backends with the given weights (0 means 1).
func weighted(ws ...int) []Backend {
	bs := make([]Backend, len(ws))
	for i, w := range ws {
		if w == 0 {
			w = 1
		}
		bs[i] = Backend{Key: fmt.Sprintf("198.18.1.%d:80", i+1), Weight: w}
	}
	return bs
}

func mustNew(t *testing.T, p Policy, bs []Backend) Balancer {
	t.Helper()
	b, err := New(p, bs, seeded())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewRejectsBadWeight(t *testing.T) {
	_, err := New(RoundRobin, []Backend{{Key: "a", Weight: 0}}, nil)
	if err == nil {
		t.Fatal("New accepted weight 0")
	}
}

func TestRoundRobinSmoothWeighted(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		usable  func(int) bool
		want    []int
	}{
		{"equal", []int{1, 1, 1}, all, []int{0, 1, 2, 0, 1, 2}},
		// nginx's smooth sequence for 5,1,1: a a b a c a a.
		{"smooth 5-1-1", []int{5, 1, 1}, all, []int{0, 0, 1, 0, 2, 0, 0}},
		{"skips unusable", []int{1, 1, 1}, func(i int) bool { return i != 1 }, []int{0, 2, 0, 2}},
		{"none usable", []int{1, 1}, func(int) bool { return false }, []int{-1, -1}},
		{"empty", nil, all, []int{-1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustNew(t, RoundRobin, weighted(tt.weights...))
			var got []int
			for range tt.want {
				got = append(got, b.Pick(nil, tt.usable, noLoad))
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("picks (-want +got):\n%s", d)
			}
		})
	}
}

func TestLeastConnections(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		loads   []int64
		usable  func(int) bool
		want    int
	}{
		{"fewest", []int{1, 1, 1}, []int64{5, 2, 7}, all, 1},
		{"per weight", []int{1, 4}, []int64{2, 4}, all, 1}, // 2/1 > 4/4
		{"skips unusable", []int{1, 1, 1}, []int64{5, 2, 7}, func(i int) bool { return i != 1 }, 0},
		{"none usable", []int{1}, []int64{0}, func(int) bool { return false }, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustNew(t, LeastConnections, weighted(tt.weights...))
			if got := b.Pick(nil, tt.usable, func(i int) int64 { return tt.loads[i] }); got != tt.want {
				t.Errorf("Pick = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestLeastConnectionsSpreadsTies(t *testing.T) {
	b := mustNew(t, LeastConnections, keys(3))
	counts := make([]int, 3)
	for range 300 {
		counts[b.Pick(nil, all, noLoad)]++
	}
	if d := cmp.Diff([]int{100, 100, 100}, counts); d != "" {
		t.Errorf("tied picks (-want +got):\n%s", d)
	}
}

func TestLeastConnectionsFollowsLoad(t *testing.T) {
	// Simulated connections that never close: counts must stay level.
	b := mustNew(t, LeastConnections, weighted(1, 2, 1))
	loads := make([]int64, 3)
	for range 400 {
		loads[b.Pick(nil, all, func(i int) int64 { return loads[i] })]++
	}
	if d := cmp.Diff([]int64{100, 200, 100}, loads); d != "" {
		t.Errorf("loads (-want +got):\n%s", d)
	}
}

func TestRandomTwoChoices(t *testing.T) {
	b := mustNew(t, RandomTwoChoices, keys(4))
	loads := []int64{0, 100, 100, 100}
	counts := make([]int, 4)
	for range 1000 {
		counts[b.Pick(nil, all, func(i int) int64 { return loads[i] })]++
	}
	// Backend 0 wins whenever it is drawn, which is half the draws of two out of four.
	if counts[0] < 400 {
		t.Errorf("idle backend picked %d of 1000 times, want about 500 (counts %v)", counts[0], counts)
	}
	for i := 1; i < 4; i++ {
		if counts[i] == 0 {
			t.Errorf("backend %d never picked (counts %v)", i, counts)
		}
	}

	usable := func(i int) bool { return i == 2 }
	for range 10 {
		if got := b.Pick(nil, usable, noLoad); got != 2 {
			t.Fatalf("with one usable backend Pick = %d, want 2", got)
		}
	}
	if got := b.Pick(nil, func(int) bool { return false }, noLoad); got != -1 {
		t.Errorf("with no usable backend Pick = %d, want -1", got)
	}
}

func TestRandomTwoChoicesWeights(t *testing.T) {
	b := mustNew(t, RandomTwoChoices, weighted(1, 3))
	loads := make([]int64, 2)
	for range 4000 {
		loads[b.Pick(nil, all, func(i int) int64 { return loads[i] })]++
	}
	// Load per weight stays level: about 1000 and 3000.
	if loads[0] < 900 || loads[0] > 1100 {
		t.Errorf("loads %v, want about [1000 3000]", loads)
	}
}

// TestPickReadsUsabilityOnce changes each backend's usability once Pick has read it, as
// health checks and the other event loops' connects do while it runs: every policy must
// read it at most once per backend and pick a backend usable at that read, or return -1
// when none was. RandomTwoChoices read it again for its draws, which then found none
// (index -1) or a weight its total did not hold, and panicked.
func TestPickReadsUsabilityOnce(t *testing.T) {
	scenarios := []struct {
		name         string
		weights      []int
		first, later []bool
	}{
		{"one goes down", []int{1, 1}, []bool{true, true}, []bool{true, false}},
		{"the only one goes down", []int{1, 1, 1}, []bool{false, true, false}, []bool{false, false, false}},
		{"a heavy one comes up", []int{1, 1, 10}, []bool{true, true, false}, []bool{false, true, true}},
	}
	for _, p := range []Policy{RoundRobin, LeastConnections, RandomTwoChoices, SourceHash} {
		for _, sc := range scenarios {
			t.Run(p.String()+"/"+sc.name, func(t *testing.T) {
				b := mustNew(t, p, weighted(sc.weights...))
				for k := range 100 {
					reads := make([]int, len(sc.weights))
					usable := func(i int) bool {
						reads[i]++
						if reads[i] == 1 {
							return sc.first[i]
						}
						return sc.later[i]
					}
					got := func() (got int) {
						defer func() {
							if r := recover(); r != nil {
								t.Fatalf("pick %d panicked: %v", k, r)
							}
						}()
						return b.Pick([]byte{byte(k)}, usable, noLoad)
					}()
					for i, n := range reads {
						if n > 1 {
							t.Fatalf("pick %d read backend %d's usability %d times", k, i, n)
						}
					}
					if got < 0 || !sc.first[got] {
						t.Fatalf("pick %d = %d, want a backend usable when read (%v)", k, got, sc.first)
					}
				}
			})
		}
	}
}

func clients(n int) [][]byte {
	out := make([][]byte, n)
	for i := range n {
		a := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		out[i] = a.AsSlice()
	}
	return out
}

func TestSourceHashStableAndSpread(t *testing.T) {
	b := mustNew(t, SourceHash, keys(4))
	cs := clients(4000)
	counts := make([]int, 4)
	for _, c := range cs {
		first := b.Pick(c, all, noLoad)
		if again := b.Pick(c, all, noLoad); again != first {
			t.Fatalf("client %v mapped to %d then %d", c, first, again)
		}
		counts[first]++
	}
	for i, n := range counts {
		if n < 800 || n > 1200 {
			t.Errorf("backend %d got %d of 4000 clients, want about 1000 (counts %v)", i, n, counts)
		}
	}
}

func TestSourceHashOrderIndependent(t *testing.T) {
	bs := keys(3)
	rev := []Backend{bs[2], bs[1], bs[0]}
	a, b := mustNew(t, SourceHash, bs), mustNew(t, SourceHash, rev)
	for _, c := range clients(500) {
		if ka, kb := bs[a.Pick(c, all, noLoad)].Key, rev[b.Pick(c, all, noLoad)].Key; ka != kb {
			t.Fatalf("client %v: %s in one order, %s in the other", c, ka, kb)
		}
	}
}

// TestSourceHashMinimalDisruption checks the consistent-hash promise: adding a backend
// moves clients only to the new one, removing one moves only its own clients, and a
// backend that is unusable for a while sends back exactly its own clients.
func TestSourceHashMinimalDisruption(t *testing.T) {
	four := keys(5)[:4]
	five := keys(5)
	b4, b5 := mustNew(t, SourceHash, four), mustNew(t, SourceHash, five)
	cs := clients(5000)
	moved := 0
	for _, c := range cs {
		k4, k5 := four[b4.Pick(c, all, noLoad)].Key, five[b5.Pick(c, all, noLoad)].Key
		if k4 != k5 {
			moved++
			if k5 != five[4].Key {
				t.Fatalf("adding %s moved client %v from %s to %s", five[4].Key, c, k4, k5)
			}
		}
	}
	// About a fifth of the clients move to the new backend.
	if moved < 800 || moved > 1200 {
		t.Errorf("adding a fifth backend moved %d of 5000 clients, want about 1000", moved)
	}

	// Removal, seen as backend 1 becoming unusable.
	without1 := func(i int) bool { return i != 1 }
	for _, c := range cs {
		before, after := b4.Pick(c, all, noLoad), b4.Pick(c, without1, noLoad)
		if before != 1 && after != before {
			t.Fatalf("removing backend 1 moved client %v from %d to %d", c, before, after)
		}
		if after == 1 {
			t.Fatalf("client %v still sent to the removed backend", c)
		}
	}
}

func TestSourceHashWeights(t *testing.T) {
	b := mustNew(t, SourceHash, weighted(1, 3))
	counts := make([]int, 2)
	for _, c := range clients(4000) {
		counts[b.Pick(c, all, noLoad)]++
	}
	if counts[0] < 850 || counts[0] > 1150 {
		t.Errorf("counts %v, want about [1000 3000]", counts)
	}
}

func TestPolicyString(t *testing.T) {
	got := []string{RoundRobin.String(), LeastConnections.String(), RandomTwoChoices.String(), SourceHash.String(), Policy(9).String()}
	want := []string{"RoundRobin", "LeastConnections", "RandomTwoChoices", "SourceHash", "Policy(9)"}
	if d := cmp.Diff(want, got); d != "" {
		t.Error(d)
	}
}
