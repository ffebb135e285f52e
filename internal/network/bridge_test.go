package network

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
)

func TestAllocator(t *testing.T) {
	a := newAllocator(3)
	for want := range 3 {
		if got, err := a.get(); err != nil || got != want {
			t.Fatalf("get() = %d, %v, want %d", got, err, want)
		}
	}
	if _, err := a.get(); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("get() on a full allocator = %v, want ErrNoCapacity", err)
	}
	a.put(1)
	if got, _ := a.get(); got != 1 {
		t.Errorf("get() after put(1) = %d, want the released 1", got)
	}
	a.put(0)
	if err := a.reserve(0); err != nil {
		t.Fatalf("reserve(0): %v", err)
	}
	if _, err := a.get(); !errors.Is(err, ErrNoCapacity) {
		t.Errorf("get() with the only free index reserved = %v, want ErrNoCapacity", err)
	}
	if err := a.reserve(2); !errors.Is(err, ErrInUse) {
		t.Errorf("reserve of an index in use = %v, want ErrInUse", err)
	}
	if err := a.take(0); err != nil {
		t.Errorf("take of a reserved index (resume) = %v", err)
	}
	if err := a.take(0); !errors.Is(err, ErrInUse) {
		t.Errorf("second take = %v, want ErrInUse", err)
	}
	if err := a.take(3); !errors.Is(err, ErrNotFound) {
		t.Errorf("take(3) of 3 = %v, want ErrNotFound", err)
	}
	// A resume whose TAP cannot be made hands a taken index back to its
	// paused sandbox: park, not reserve (which refuses an index in use).
	a.park(0)
	if !a.reserved(0) {
		t.Error("park of a taken index did not reserve it")
	}
	if _, err := a.get(); !errors.Is(err, ErrNoCapacity) {
		t.Errorf("get() with index 0 parked = %v, want ErrNoCapacity", err)
	}
}

func TestBridgeNames(t *testing.T) {
	cfg := Config{Mode: ModeBridge}.withDefaults()
	s := cfg.bridgeSlot(0)
	if s.GuestAddr != netip.MustParseAddr("172.30.0.2") || s.Gateway != netip.MustParseAddr("172.30.0.1") || s.HostAddr != s.GuestAddr {
		t.Errorf("slot 0 addresses: guest %s gateway %s host %s", s.GuestAddr, s.Gateway, s.HostAddr)
	}
	if got, want := s.BootArgs(), "ip=172.30.0.2::172.30.0.1:255.255.255.0::eth0:off"; got != want {
		t.Errorf("BootArgs() = %q, want %q", got, want)
	}
	if s.GuestMAC != "02:eb:ac:1e:00:02" {
		t.Errorf("GuestMAC = %s", s.GuestMAC)
	}
	if s.Netns != "" || s.NetnsPath != "" || s.HostVeth != "" {
		t.Errorf("bridge slot has namespace fields: %+v", s)
	}
	// Deterministic, distinct per bridge and index, within IFNAMSIZ.
	if a, b := BridgeTAPName("ember-br0", 7), BridgeTAPName("ember-br0", 7); a != b {
		t.Errorf("TAP name not deterministic: %s, %s", a, b)
	}
	if BridgeTAPName("ember-br0", 7) == BridgeTAPName("ember-br1", 7) {
		t.Errorf("two bridges share TAP name %s", BridgeTAPName("ember-br0", 7))
	}
	if n := BridgeTAPName("abcdefghijklmno", 65532); len(n) > 15 || !strings.HasPrefix(n, "emb") {
		t.Errorf("TAP name %q too long or without prefix", n)
	}
	if strings.HasPrefix(BridgeTAPName("x", 1), VethPrefix) {
		t.Errorf("TAP name looks like a slot veth")
	}
	if cfg.bridgeCapacity() != 253 {
		t.Errorf("capacity of a /24 = %d, want 253", cfg.bridgeCapacity())
	}
}

func TestBridgeConfigValidate(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"defaults", Config{Mode: ModeBridge}, ""},
		{"custom", Config{Mode: ModeBridge, Bridge: "br-test_1", BridgeCIDR: p("192.168.77.0/29")}, ""},
		{"unknown mode", Config{Mode: "tun"}, `mode "tun" is neither`},
		{"malformed cidr", Config{Mode: ModeBridge, BridgeCIDR: p("172.30.0.1/24")}, "has host bits set"},
		{"ipv6", Config{Mode: ModeBridge, BridgeCIDR: p("fd00::/64")}, "is not IPv4"},
		{"no room for guests", Config{Mode: ModeBridge, BridgeCIDR: p("172.30.0.0/30")}, "leaves no room for a gateway and guests"},
		{"too large", Config{Mode: ModeBridge, BridgeCIDR: p("172.0.0.0/8")}, "too large"},
		{"overlaps slots", Config{Mode: ModeBridge, BridgeCIDR: p("10.11.4.0/24")}, "overlaps the slot ranges"},
		{"link-local", Config{Mode: ModeBridge, BridgeCIDR: p("169.254.0.0/16")}, "link-local"},
		{"long name", Config{Mode: ModeBridge, Bridge: "ember-bridge-0123"}, "is not an interface name"},
		{"bad name", Config{Mode: ModeBridge, Bridge: "br 0"}, "is not an interface name"},
		{"bridge is uplink", Config{Mode: ModeBridge, Bridge: "eth0", Uplink: "eth0"}, "is the uplink"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckValidation(t, tt.cfg.Validate(), tt.want, ErrInvalidConfig)
		})
	}
}
