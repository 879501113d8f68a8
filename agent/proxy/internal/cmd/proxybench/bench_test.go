package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func TestRoundRatiosCountsTheRoundsOursWasBetter(t *testing.T) {
	rps := func(xs ...float64) []sample {
		var ss []sample
		for _, x := range xs {
			ss = append(ss, sample{rps: x})
		}
		return ss
	}
	f := func(s sample) float64 { return s.rps }
	for _, tc := range []struct {
		name          string
		ours, theirs  []sample
		lowerIsBetter bool
		want          string
	}{
		{"higher is better", rps(110, 90, 100), rps(100, 100, 100), false, "1.00x [0.90, 1.10] 1/3"},
		{"lower is better", rps(110, 90, 80), rps(100, 100, 100), true, "0.90x [0.80, 1.10] 2/3"},
		{"ties count for neither", rps(100, 100), rps(100, 100), false, "1.00x [1.00, 1.00] 0/2"},
		{"rounds without a pair are left out", rps(120, 130, 140), rps(100), false, "1.20x [1.20, 1.20] 1/1"},
		{"no rounds", nil, rps(100), false, "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := roundRatios(tc.ours, tc.theirs, f, tc.lowerIsBetter); got != tc.want {
				t.Errorf("roundRatios = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRunOrderBalancesPositionsAndPredecessors(t *testing.T) {
	for n := 1; n <= 7; n++ {
		period := orderPeriod(n)
		atPosition := map[[2]int]int{} // {position, proxy}
		after := map[[2]int]int{}      // {predecessor, proxy}
		for r := range period {
			order := runOrder(r, n)
			if !slices.Equal(runOrder(r+period, n), order) {
				t.Errorf("n=%d: round %d and round %d differ: the design should repeat", n, r, r+period)
			}
			seen := make([]bool, n)
			for pos, k := range order {
				if k < 0 || k >= n || seen[k] {
					t.Fatalf("n=%d round %d: %v is not an order of %d proxies", n, r, order, n)
				}
				seen[k] = true
				atPosition[[2]int{pos, k}]++
				if pos > 0 {
					after[[2]int{order[pos-1], k}]++
				}
			}
		}
		for k := range n {
			for pos := range n {
				if got, want := atPosition[[2]int{pos, k}], period/n; got != want {
					t.Errorf("n=%d: proxy %d runs in position %d in %d of %d rounds, want %d", n, k, pos, got, period, want)
				}
			}
			for prev := range n {
				if got, want := after[[2]int{prev, k}], period/n; prev != k && got != want {
					t.Errorf("n=%d: proxy %d runs right after proxy %d in %d of %d rounds, want %d", n, k, prev, got, period, want)
				}
			}
		}
	}
}

// The peers' buffer size reaches their configurations, and only when set.
func TestPeerBufferSize(t *testing.T) {
	for _, tc := range []struct {
		bufsize      int
		nginx, hapxy string
	}{
		{0, "", ""},
		{65536, "proxy_buffer_size 65536;", "tune.bufsize 65536"},
	} {
		dir := t.TempDir()
		for _, c := range []struct {
			write func() (string, error)
			want  string
			key   string
		}{
			{func() (string, error) { return writeNginxStream(dir, 8002, []string{"198.18.0.3:8080"}, tc.bufsize) }, tc.nginx, "proxy_buffer_size"},
			{func() (string, error) { return writeHAProxy(dir, 8003, []string{"198.18.0.3:8080"}, tc.bufsize) }, tc.hapxy, "tune.bufsize"},
		} {
			path, err := c.write()
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			switch conf := string(b); {
			case c.want == "" && strings.Contains(conf, c.key):
				t.Errorf("bufsize 0: %s sets %s:\n%s", path, c.key, conf)
			case c.want != "" && !strings.Contains(conf, c.want):
				t.Errorf("bufsize %d: %s lacks %q:\n%s", tc.bufsize, path, c.want, conf)
			}
		}
	}
}

func TestPinnedCPUs(t *testing.T) {
	for _, tt := range []struct {
		n             int
		load, proxies string
	}{
		{2, "0", "1"},
		{4, "0-2", "3"},
		{16, "0-14", "15"},
	} {
		if load, proxies := pinnedCPUs(tt.n); load != tt.load || proxies != tt.proxies {
			t.Errorf("pinnedCPUs(%d) = %q, %q; want %q, %q", tt.n, load, proxies, tt.load, tt.proxies)
		}
	}
}
