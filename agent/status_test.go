package agent

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-logr/logr"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/lbpair/lbpair/agent/track"
	"github.com/lbpair/lbpair/agent/vrrp"
	crdyaml "github.com/lbpair/lbpair/config/crd"
)

// longFault is a Fault reason as the tracker builds it when five listeners
// have no healthy backend: well over the CRD's 256 characters.
func longFault() string {
	tr := track.New(track.Check{Name: "proxy", Weight: 0})
	var problems []string
	for _, n := range []string{"http", "https", "smtp", "imaps", "submission"} {
		problems = append(problems, fmt.Sprintf("listener %q has no healthy backend (0 of 2)", n))
	}
	tr.SetHealth("proxy", false, strings.Join(problems, "; "))
	_, _, why := tr.Effective(100)
	return why
}

// The apiserver refuses an entry whose reason is over the CRD's bound, and
// keeps refusing every write while the Fault lasts: the entry shortens it.
func TestEntryShortensReason(t *testing.T) {
	long := longFault()
	if len(long) <= maxReason {
		t.Fatalf("the test's reason is %d bytes, no longer than the bound %d", len(long), maxReason)
	}
	r := newStatusReporter(logr.Discard(), types.NamespacedName{Namespace: "prod", Name: "web"}, "lb1")
	r.addr = func() string { return "198.18.0.11" }
	now := time.Now()
	for name, st := range map[string]Status{
		"the router's reason": {Running: true, VRRP: vrrp.Status{State: vrrp.Fault, Reason: long}},
		"the router's error":  {Err: errors.New(long)},
	} {
		t.Run(name, func(t *testing.T) {
			got := r.entryOf(st, now).Reason
			if len(got) > maxReason || !utf8.ValidString(got) {
				t.Fatalf("reason is %d bytes (valid UTF-8: %v), want at most %d: %q", len(got), utf8.ValidString(got), maxReason, got)
			}
			if !strings.HasSuffix(got, "...") || !strings.HasPrefix(long, strings.TrimSuffix(got, "...")) {
				t.Errorf("reason %q is not the start of %q and an ellipsis", got, long)
			}
		})
	}
}

func TestShorten(t *testing.T) {
	tests := []struct {
		name, in string
		limit    int
		want     string
	}{
		{"fits", "short", 10, "short"},
		{"exactly the bound", "0123456789", 10, "0123456789"},
		{"cut", "0123456789ab", 10, "0123456..."},
		// "é" is two bytes: the cut moves back to the character's start.
		{"on a character boundary", "abcdéfghijkl", 8, "abcd..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := shorten(tt.in, tt.limit); got != tt.want {
				t.Errorf("shorten(%q, %d) = %q, want %q", tt.in, tt.limit, got, tt.want)
			}
		})
	}
}

// A configError cut in the middle of a character would carry invalid UTF-8
// into the status.
func TestConfigErrorShortenedOnACharacter(t *testing.T) {
	r := newStatusReporter(logr.Discard(), types.NamespacedName{Namespace: "prod", Name: "web"}, "lb1")
	r.setConfigError(errors.New(strings.Repeat("é", maxConfigError)))
	got := *r.configErr.Load()
	if len(got) > maxConfigError || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Errorf("configError is %d bytes, valid UTF-8: %v, ends %q; want at most %d valid bytes ending in ...", len(got), utf8.ValidString(got), got[len(got)-5:], maxConfigError)
	}
}

// The bounds are the CRD's.
func TestEntryBoundsAreTheCRDs(t *testing.T) {
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(crdyaml.LoadBalancerPair, &crd); err != nil {
		t.Fatal(err)
	}
	entry := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["status"].Properties["agents"].Items.Schema.Properties
	for field, want := range map[string]int64{"reason": maxReason, "configError": maxConfigError} {
		if got := entry[field].MaxLength; got == nil || *got != want {
			t.Errorf("status.agents[].%s maxLength %v, want %d", field, got, want)
		}
	}
}

// The apiserver refuses a field manager over 128 bytes: a node name of 253
// characters must not make every write of its agent fail.
func TestFieldManagerOfALongNodeName(t *testing.T) {
	if got := FieldManager("lb1"); got != "lbpair-agent/lb1" {
		t.Errorf("FieldManager(lb1) = %q: a short name's manager must not change, or it loses the fields it owns", got)
	}
	long := strings.Repeat("n", 252)
	a, b := FieldManager(long+"a"), FieldManager(long+"b")
	if len(a) > 128 || len(b) > 128 || a == b {
		t.Errorf("field managers of two long node names: %d and %d bytes, equal %v; want at most 128 and different", len(a), len(b), a == b)
	}
}
