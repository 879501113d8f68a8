package vrrp

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// ErrRestartRequired is returned by Router.Reconfigure for a change that a
// running router cannot take: version, VRID, virtual IPs or interface.
var ErrRestartRequired = errors.New("the change needs a new VRRP router")

// Announce tunes the announcements of a new master: Repeat messages per
// virtual IP at once, a second burst after Delay (0: none), and a burst every
// Refresh while master (0: none), as keepalived's garp_master_repeat,
// garp_master_delay and garp_master_refresh.
type Announce struct {
	Repeat  int
	Delay   time.Duration
	Refresh time.Duration
}

// Config is a VRRP router's configuration.
type Config struct {
	Version        int
	VRID           uint8
	Priority       uint8
	AdvertInterval time.Duration
	Preempt        bool
	PreemptDelay   time.Duration
	// Interface is the interface name; when empty, the interface of the
	// route to the first virtual IP.
	Interface string
	VIPs      []netip.Addr
	// Peers are unicast peers; empty means multicast.
	Peers []netip.Addr
	// AuthPassword is VRRPv2 simple-text authentication, up to 8 bytes.
	AuthPassword string
	Announce     Announce
}

// Validate checks the configuration; errors name the field.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Version != 2 && c.Version != 3 {
		bad("vrrpVersion %d: use 2 or 3", c.Version)
	}
	if c.VRID == 0 {
		bad("virtualRouterID 0: use 1 to 255")
	}
	if c.Priority == 0 {
		bad("priority 0 is reserved for a master that leaves: use 1 to 255")
	}
	if len(c.VIPs) == 0 {
		bad("virtualIPs: at least one is required")
	}
	for i, v := range c.VIPs {
		if !v.IsValid() || v.Is4() != c.VIPs[0].Is4() {
			bad("virtualIPs[%d] %v: all virtual IPs must be valid and of one family", i, v)
		}
	}
	for i, p := range c.Peers {
		if len(c.VIPs) > 0 && (!p.IsValid() || p.Is4() != c.VIPs[0].Is4()) {
			bad("unicast.peers[%d] %v: must be of the virtual IPs' family", i, p)
		}
	}
	switch c.Version {
	case 3:
		if c.AdvertInterval < 10*time.Millisecond || c.AdvertInterval > maxInterval3 || c.AdvertInterval%(10*time.Millisecond) != 0 {
			bad("advertisementInterval %v: VRRPv3 needs a multiple of 10ms from 10ms to 40.95s", c.AdvertInterval)
		}
		if c.AuthPassword != "" {
			bad("authentication: VRRPv3 has none; use vrrpVersion 2")
		}
	case 2:
		if c.AdvertInterval < time.Second || c.AdvertInterval > 255*time.Second || c.AdvertInterval%time.Second != 0 {
			bad("advertisementInterval %v: VRRPv2 needs whole seconds from 1s to 255s", c.AdvertInterval)
		}
		if len(c.VIPs) > 0 && c.VIPs[0].Is6() {
			bad("virtualIPs: IPv6 needs vrrpVersion 3")
		}
		if len(c.AuthPassword) > authLen {
			bad("authentication: the password is %d bytes, VRRPv2 carries at most 8", len(c.AuthPassword))
		}
	}
	if c.PreemptDelay < 0 {
		bad("preemptDelay %v is negative", c.PreemptDelay)
	}
	if c.Announce.Repeat < 0 || c.Announce.Delay < 0 || c.Announce.Refresh < 0 {
		bad("announcements: repeat, delay and refresh must not be negative")
	}
	return errors.Join(errs...)
}

// needsRestart tells whether moving from c to n needs a new router.
func (c Config) needsRestart(n Config) bool {
	return c.Version != n.Version || c.VRID != n.VRID || c.Interface != n.Interface || c.VIPs[0].Is4() != n.VIPs[0].Is4()
}
