package v1alpha1

import (
	"strings"
	"testing"
)

// A field manager may have 128 characters; pair and node names 253.
func TestFieldManagerFor(t *testing.T) {
	if got := FieldManagerFor("lbpair-manager", "web"); got != "lbpair-manager/web" {
		t.Errorf("short name: %q, want it as it was", got)
	}
	longest := strings.Repeat("a", 128-len("lbpair-manager/"))
	if got := FieldManagerFor("lbpair-manager", longest); got != "lbpair-manager/"+longest {
		t.Errorf("128 characters: %q, want it as it was", got)
	}
	a, b := strings.Repeat("a", 252)+"a", strings.Repeat("a", 252)+"b"
	ma, mb := FieldManagerFor("lbpair-agent", a), FieldManagerFor("lbpair-agent", b)
	for _, m := range []string{ma, mb} {
		if len(m) != 128 || !strings.HasPrefix(m, "lbpair-agent/aaaa") {
			t.Errorf("253-character name: %q (%d characters), want 128 from lbpair-agent/ and the name", m, len(m))
		}
	}
	if ma == mb {
		t.Errorf("two long names share the field manager %q", ma)
	}
}
