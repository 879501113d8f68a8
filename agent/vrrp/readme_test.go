package vrrp

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEKeepalivedConfigParses runs keepalived's own check on the
// keepalived.conf the README shows: users copy it, for the keepalived side of
// a migration too, and keepalived ignores what it does not understand (a
// "auth_type PASS;" runs without authentication, and the other node then
// takes the VIP as well), with no more than a line on its output.
func TestREADMEKeepalivedConfigParses(t *testing.T) {
	bin := needKeepalived(t)
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)```\n(# keepalived .*?)```").FindSubmatch(readme)
	if block == nil {
		t.Fatal("README.md has no keepalived.conf block starting with a \"# keepalived\" comment")
	}
	conf := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(conf, block[1], 0o600); err != nil {
		t.Fatal(err)
	}
	// The exit status also counts the warning about scripts run without
	// enable_script_security, which the recipe, as people run it, has.
	out, _ := exec.Command(bin, "--config-test", "-f", conf).CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" && !strings.Contains(line, "script_security not enabled") {
			t.Errorf("keepalived --config-test on the README's keepalived.conf: %s", line)
		}
	}
}
