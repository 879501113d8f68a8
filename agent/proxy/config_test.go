package proxy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func validListener() ListenerConfig {
	return ListenerConfig{
		Name:     "web",
		Addrs:    []netip.AddrPort{netip.MustParseAddrPort("198.18.0.100:80"), netip.MustParseAddrPort("198.18.0.101:80")},
		Backends: []Backend{{Addr: netip.MustParseAddrPort("198.18.0.11:8080"), Weight: 1}},
		Passive:  PassiveCheck{MaxFails: 1, FailTimeout: 10 * time.Second},
		Active:   &ActiveCheck{Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: 2, Fall: 3},
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   []string // substrings of the error, one per expected problem; none = valid
	}{
		{"valid", func(*Config) {}, nil},
		{"no listeners", func(c *Config) { c.Listeners = nil }, nil},
		{"service backends come later", func(c *Config) { c.Listeners[0].Backends = nil }, nil},
		{"empty name", func(c *Config) { c.Listeners[0].Name = "" }, []string{"listeners[0].name: empty"}},
		{"duplicate name", func(c *Config) {
			l := validListener()
			l.Addrs = []netip.AddrPort{netip.MustParseAddrPort("198.18.0.100:443")}
			c.Listeners = append(c.Listeners, l)
		}, []string{`listeners[1].name: "web" is also the name of listeners[0]`}},
		{"no addrs", func(c *Config) { c.Listeners[0].Addrs = nil }, []string{`listeners[0] ("web").addrs: empty`}},
		{"port zero", func(c *Config) { c.Listeners[0].Addrs[0] = netip.MustParseAddrPort("198.18.0.100:0") }, []string{"addrs[0]: 198.18.0.100:0 has port 0", "addrs[1]: port 80 differs"}},
		{"ports differ", func(c *Config) { c.Listeners[0].Addrs[1] = netip.MustParseAddrPort("198.18.0.101:81") }, []string{"addrs[1]: port 81 differs"}},
		{"address shared by listeners", func(c *Config) {
			l := validListener()
			l.Name = "other"
			c.Listeners = append(c.Listeners, l)
		}, []string{`listeners[1] ("other").addrs[0]: 198.18.0.100:80 is already listened on`, "addrs[1]: 198.18.0.101:80 is already"}},
		{"bad balance", func(c *Config) { c.Listeners[0].Balance = 7 }, []string{".balance: unknown policy 7"}},
		{"bad proxy protocol", func(c *Config) { c.Listeners[0].ProxyProtocol = 3 }, []string{".proxyProtocol: unknown version 3"}},
		{"bad backend", func(c *Config) {
			c.Listeners[0].Backends = []Backend{{Weight: 1}, {Addr: netip.MustParseAddrPort("198.18.0.11:8080")},
				{Addr: netip.MustParseAddrPort("198.18.0.11:8080"), Weight: 1}}
		}, []string{"backends[0].addr", "backends[1].weight: 0 must be at least 1", "backends[2].addr: 198.18.0.11:8080 is also backends[1]"}},
		{"passive", func(c *Config) { c.Listeners[0].Passive = PassiveCheck{MaxFails: 2} }, []string{".passive.failTimeout: 0s must be positive"}},
		{"negative max fails", func(c *Config) { c.Listeners[0].Passive = PassiveCheck{MaxFails: -1} }, []string{".passive.maxFails: -1 is negative"}},
		{"active", func(c *Config) { c.Listeners[0].Active = &ActiveCheck{Interval: time.Second, Timeout: 2 * time.Second} },
			[]string{".active.timeout: 2s must be positive and at most the interval", ".active.rise: 0", ".active.fall: 0"}},
		{"active interval", func(c *Config) { c.Listeners[0].Active.Interval = 0 }, []string{".active.interval: 0s must be positive", ".active.timeout"}},
		{"negatives", func(c *Config) {
			l := &c.Listeners[0]
			l.ConnectTimeout, l.ConnectAttempts, l.IdleTimeout, l.MaxConnections = -1, -1, -1, -1
			c.DrainTimeout = -1
		}, []string{"drainTimeout", ".connectTimeout", ".connectAttempts", ".idleTimeout", ".maxConnections"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Listeners: []ListenerConfig{validListener()}}
			tt.mutate(&c)
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want an error wrapping ErrInvalidConfig", err)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
			if got := strings.Count(msg, "\n") + 1; got != len(tt.want) {
				t.Errorf("error has %d problems, want %d:\n%s", got, len(tt.want), msg)
			}
		})
	}
}

func TestConnectDefaults(t *testing.T) {
	var l ListenerConfig
	if l.connectTimeout() != DefaultConnectTimeout || l.connectAttempts() != DefaultConnectAttempts {
		t.Errorf("defaults = %v, %d", l.connectTimeout(), l.connectAttempts())
	}
	l.ConnectTimeout, l.ConnectAttempts = time.Second, 1
	if l.connectTimeout() != time.Second || l.connectAttempts() != 1 {
		t.Errorf("set values = %v, %d", l.connectTimeout(), l.connectAttempts())
	}
}
