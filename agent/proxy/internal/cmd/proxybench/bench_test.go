package main

import "testing"

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
