package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/lbpair/lbpair/agent/proxy/balance"
)

// Balance is how a listener picks the backend for a new connection.
type Balance int

// The balancing policies; see package balance for how each one chooses.
const (
	RoundRobin Balance = iota
	LeastConnections
	RandomTwoChoices
	SourceHash
)

// String returns the policy's name as the API spells it.
func (b Balance) String() string { return balance.Policy(b).String() }

// ProxyProtocol is the PROXY protocol header sent to backends at the start of each
// connection, so they see the client's address.
type ProxyProtocol int

// The PROXY protocol choices.
const (
	ProxyProtocolNone ProxyProtocol = iota
	ProxyProtocolV1
	ProxyProtocolV2
)

// Defaults for zero values of ListenerConfig.
const (
	// DefaultConnectTimeout bounds one connect to a backend when ConnectTimeout is 0.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultConnectAttempts is how many backends a connection may try when
	// ConnectAttempts is 0.
	DefaultConnectAttempts = 3
)

// ErrInvalidConfig is wrapped by every error of Config.Validate.
var ErrInvalidConfig = errors.New("invalid proxy configuration")

// Backend is one backend of a listener.
type Backend struct {
	Addr netip.AddrPort
	// Weight is the backend's share of new connections, at least 1.
	Weight int
}

// PassiveCheck marks a backend down after MaxFails failed connects within FailTimeout,
// for FailTimeout (nginx's max_fails and fail_timeout). MaxFails 0 disables it.
type PassiveCheck struct {
	MaxFails    int
	FailTimeout time.Duration
}

// ActiveCheck probes each backend with a TCP connect every Interval, each bounded by
// Timeout; Fall failures in a row take a backend down, Rise successes bring it back.
type ActiveCheck struct {
	Interval, Timeout time.Duration
	Rise, Fall        int
}

// ListenerConfig is one proxied port.
type ListenerConfig struct {
	// Name identifies the listener in metrics, logs, SetBackends and Status.
	Name string
	// Addrs are the addresses listened on, one per virtual IP, all with the same port.
	// They need not be on the node yet: sockets bind with IP_FREEBIND, so a backup is warm.
	Addrs []netip.AddrPort
	// Balance picks a backend per connection.
	Balance Balance
	// Backends are static backends. When empty, the set last given to SetBackends (the
	// ready endpoints of a Service) is kept; until the first SetBackends the listener is
	// pending (see ListenerStatus.Pending).
	Backends []Backend
	// Passive marks backends down on failed connects.
	Passive PassiveCheck
	// Active probes backends; nil means no probes.
	Active *ActiveCheck
	// ProxyProtocol sends a PROXY header to the backend.
	ProxyProtocol ProxyProtocol
	// ConnectTimeout bounds each connect to a backend; 0 means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// ConnectAttempts is how many backends one connection may try; 0 means
	// DefaultConnectAttempts.
	ConnectAttempts int
	// IdleTimeout closes a connection that moved no data either way for that long; 0 never.
	IdleTimeout time.Duration
	// MaxConnections caps the open connections; 0 is unlimited. Connections past the cap
	// are closed at once.
	MaxConnections int
}

// Config is the whole data plane of one agent.
type Config struct {
	Listeners []ListenerConfig
	// DrainTimeout is how long Shutdown's caller should let connections finish; the agent
	// passes it as the context deadline. Kept here so that one value configures both.
	DrainTimeout time.Duration
	// AccessLog writes one line per finished connection.
	AccessLog bool
}

// Validate checks the configuration and returns every problem, each naming its field,
// joined in one error that wraps ErrInvalidConfig.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...)))
	}
	if c.DrainTimeout < 0 {
		bad("drainTimeout", "%v is negative; use 0 to close connections at once", c.DrainTimeout)
	}
	names := map[string]int{}
	owners := map[netip.AddrPort]string{}
	for i, l := range c.Listeners {
		f := fmt.Sprintf("listeners[%d]", i)
		if l.Name == "" {
			bad(f+".name", "empty; every listener needs a unique name")
		} else if j, dup := names[l.Name]; dup {
			bad(f+".name", "%q is also the name of listeners[%d]", l.Name, j)
		} else {
			names[l.Name] = i
			f = fmt.Sprintf("listeners[%d] (%q)", i, l.Name)
		}
		validateListener(f, l, owners, bad)
	}
	return errors.Join(errs...)
}

func validateListener(f string, l ListenerConfig, owners map[netip.AddrPort]string, bad func(field, format string, args ...any)) {
	if len(l.Addrs) == 0 {
		bad(f+".addrs", "empty; give at least one VIP:port")
	}
	for j, a := range l.Addrs {
		af := fmt.Sprintf("%s.addrs[%d]", f, j)
		switch {
		case !a.Addr().IsValid():
			bad(af, "no IP address")
		case a.Port() == 0:
			bad(af, "%v has port 0; give the port to listen on", a)
		case a.Port() != l.Addrs[0].Port():
			bad(af, "port %d differs from addrs[0]'s %d; all addresses of a listener share one port", a.Port(), l.Addrs[0].Port())
		}
		a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
		if other, dup := owners[a]; dup {
			bad(af, "%v is already listened on by %s", a, other)
		}
		owners[a] = f
	}
	if l.Balance < RoundRobin || l.Balance > SourceHash {
		bad(f+".balance", "unknown policy %d", int(l.Balance))
	}
	if l.ProxyProtocol < ProxyProtocolNone || l.ProxyProtocol > ProxyProtocolV2 {
		bad(f+".proxyProtocol", "unknown version %d", int(l.ProxyProtocol))
	}
	validateBackends(f+".backends", l.Backends, bad)
	if l.Passive.MaxFails < 0 {
		bad(f+".passive.maxFails", "%d is negative; use 0 to disable passive checks", l.Passive.MaxFails)
	}
	if l.Passive.MaxFails > 0 && l.Passive.FailTimeout <= 0 {
		bad(f+".passive.failTimeout", "%v must be positive when maxFails is set", l.Passive.FailTimeout)
	}
	if a := l.Active; a != nil {
		if a.Interval <= 0 {
			bad(f+".active.interval", "%v must be positive", a.Interval)
		}
		if a.Timeout <= 0 || a.Timeout > a.Interval {
			bad(f+".active.timeout", "%v must be positive and at most the interval %v", a.Timeout, a.Interval)
		}
		if a.Rise < 1 {
			bad(f+".active.rise", "%d must be at least 1", a.Rise)
		}
		if a.Fall < 1 {
			bad(f+".active.fall", "%d must be at least 1", a.Fall)
		}
	}
	if l.ConnectTimeout < 0 {
		bad(f+".connectTimeout", "%v is negative; use 0 for the default %v", l.ConnectTimeout, DefaultConnectTimeout)
	}
	if l.ConnectAttempts < 0 {
		bad(f+".connectAttempts", "%d is negative; use 0 for the default %d", l.ConnectAttempts, DefaultConnectAttempts)
	}
	if l.IdleTimeout < 0 {
		bad(f+".idleTimeout", "%v is negative; use 0 for no idle timeout", l.IdleTimeout)
	}
	if l.MaxConnections < 0 {
		bad(f+".maxConnections", "%d is negative; use 0 for no limit", l.MaxConnections)
	}
}

func validateBackends(f string, bs []Backend, bad func(field, format string, args ...any)) {
	seen := map[netip.AddrPort]int{}
	for j, b := range bs {
		bf := fmt.Sprintf("%s[%d]", f, j)
		if !b.Addr.Addr().IsValid() || b.Addr.Port() == 0 {
			bad(bf+".addr", "%v must be an IP address with a non-zero port", b.Addr)
		}
		if b.Weight < 1 {
			bad(bf+".weight", "%d must be at least 1", b.Weight)
		}
		if k, dup := seen[b.Addr]; dup {
			bad(bf+".addr", "%v is also backends[%d]", b.Addr, k)
		}
		seen[b.Addr] = j
	}
}

// connectTimeout and connectAttempts apply the defaults.
func (l *ListenerConfig) connectTimeout() time.Duration {
	if l.ConnectTimeout == 0 {
		return DefaultConnectTimeout
	}
	return l.ConnectTimeout
}

func (l *ListenerConfig) connectAttempts() int {
	if l.ConnectAttempts == 0 {
		return DefaultConnectAttempts
	}
	return l.ConnectAttempts
}
