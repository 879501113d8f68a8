package agent

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseOptionsStateDir(t *testing.T) {
	o, err := ParseOptions([]string{"--node-name=lb1", "--namespace=prod", "--pair=web", "--state-dir=/run/lbpair"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.StateDir != "/run/lbpair" || o.LastConfigWait != 10*time.Second {
		t.Errorf("state dir %q, wait %v; want /run/lbpair and the default 10s", o.StateDir, o.LastConfigWait)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--node-name=lb1", "--config=lb.yaml", "--state-dir=/run/lbpair"}, "--state-dir is for cluster mode"},
		{[]string{"--node-name=lb1", "--namespace=prod", "--pair=web", "--last-config-wait=-1s"}, "--last-config-wait -1s"},
	} {
		if _, err := ParseOptions(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseOptions(%q): %v, want an error naming %q", tc.args, err, tc.want)
		}
	}
}
