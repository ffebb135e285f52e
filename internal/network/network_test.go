package network

import (
	"net"
	"net/netip"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
)

func TestSlotDerivation(t *testing.T) {
	custom := Config{
		HostCIDR: netip.MustParsePrefix("172.20.0.0/24"),
		VethCIDR: netip.MustParsePrefix("172.21.0.0/24"),
	}
	tests := []struct {
		name     string
		cfg      Config
		index    int
		netns    string
		path     string
		veth     string
		mac      string
		hostAddr string
		vethHost string
		vethNS   string
	}{
		{"first slot", Config{}, 0, "ember-ns-0", "/run/netns/ember-ns-0", "ember-v0", NetnsGuestMAC, "10.11.0.1", "10.12.0.0", "10.12.0.1"},
		{"second slot", Config{}, 1, "ember-ns-1", "/run/netns/ember-ns-1", "ember-v1", NetnsGuestMAC, "10.11.0.2", "10.12.0.2", "10.12.0.3"},
		{"crosses an octet", Config{}, 300, "ember-ns-300", "/run/netns/ember-ns-300", "ember-v300", NetnsGuestMAC, "10.11.1.45", "10.12.2.88", "10.12.2.89"},
		{"test range", Config{}, 2000, "ember-ns-2000", "/run/netns/ember-ns-2000", "ember-v2000", NetnsGuestMAC, "10.11.7.209", "10.12.15.160", "10.12.15.161"},
		{"last of default ranges", Config{}, 32767, "ember-ns-32767", "/run/netns/ember-ns-32767", "ember-v32767", NetnsGuestMAC, "10.11.128.0", "10.12.255.254", "10.12.255.255"},
		{"custom ranges", custom, 5, "ember-ns-5", "/run/netns/ember-ns-5", "ember-v5", NetnsGuestMAC, "172.20.0.6", "172.21.0.10", "172.21.0.11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg.withDefaults()
			s := cfg.slot(tt.index)
			if s.Index != tt.index || s.Netns != tt.netns || s.NetnsPath != tt.path || s.HostVeth != tt.veth ||
				s.GuestMAC != tt.mac || s.TAP != TAPName || s.HostAddr.String() != tt.hostAddr {
				t.Errorf("slot(%d) = %+v, want netns %s path %s veth %s mac %s host %s",
					tt.index, *s, tt.netns, tt.path, tt.veth, tt.mac, tt.hostAddr)
			}
			h, n := cfg.vethAddrs(tt.index)
			if h.String() != tt.vethHost || n.String() != tt.vethNS {
				t.Errorf("vethAddrs(%d) = %s, %s, want %s, %s", tt.index, h, n, tt.vethHost, tt.vethNS)
			}
			if i, ok := parseIndex(s.Netns, NetnsPrefix); !ok || i != tt.index {
				t.Errorf("parseIndex(%q) = %d, %v", s.Netns, i, ok)
			}
			if i, ok := parseIndex(s.HostVeth, VethPrefix); !ok || i != tt.index {
				t.Errorf("parseIndex(%q) = %d, %v", s.HostVeth, i, ok)
			}
		})
	}
}

func TestGuestMACIsLocalUnicast(t *testing.T) {
	seen := map[string]int{}
	for _, i := range []int{0, 1, 255, 256, 65535, 1<<24 + 7} {
		mac, err := net.ParseMAC(GuestMAC(i))
		if err != nil {
			t.Fatalf("GuestMAC(%d) = %q: %v", i, GuestMAC(i), err)
		}
		if mac[0]&0x02 == 0 || mac[0]&0x01 != 0 {
			t.Errorf("GuestMAC(%d) = %s: not locally administered unicast", i, mac)
		}
		if j, dup := seen[mac.String()]; dup {
			t.Errorf("GuestMAC(%d) repeats GuestMAC(%d)", i, j)
		}
		seen[mac.String()] = i
	}
}

func TestParseIndex(t *testing.T) {
	tests := []struct {
		name, in string
		want     int
		ok       bool
	}{
		{"ours", "ember-ns-12", 12, true},
		{"zero", "ember-ns-0", 0, true},
		{"leading zero", "ember-ns-012", 0, false},
		{"sign", "ember-ns-+1", 0, false},
		{"negative", "ember-ns--1", 0, false},
		{"no number", "ember-ns-", 0, false},
		{"suffix", "ember-ns-1a", 0, false},
		{"other prefix", "other-ns-1", 0, false},
		{"too long", "ember-ns-123456789", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseIndex(tt.in, NetnsPrefix)
			if got != tt.want || ok != tt.ok {
				t.Errorf("parseIndex(%q) = %d, %v, want %d, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for valid
	}{
		{"zero value", Config{}, ""},
		{"explicit defaults", Config{HostCIDR: DefaultHostCIDR, VethCIDR: DefaultVethCIDR, Uplink: "eth0", FirstIndex: 2000}, ""},
		{"smallest ranges", Config{HostCIDR: p("192.168.5.0/30"), VethCIDR: p("192.168.6.0/31"), FirstIndex: 0}, ""},
		{"ipv6 host", Config{HostCIDR: p("fd00::/64")}, "host cidr fd00::/64 is not IPv4"},
		{"host bits set", Config{VethCIDR: p("10.12.0.1/16")}, "has host bits set (want 10.12.0.0/16)"},
		{"host range too small", Config{HostCIDR: p("10.11.0.0/31")}, "host cidr 10.11.0.0/31 is too small"},
		{"veth range too small", Config{VethCIDR: p("10.12.0.0/32")}, "veth cidr 10.12.0.0/32 is too small"},
		{"ranges overlap", Config{HostCIDR: p("10.0.0.0/8")}, "host cidr 10.0.0.0/8 overlaps veth cidr 10.12.0.0/16"},
		{"guest link overlap", Config{VethCIDR: p("169.254.0.0/16")}, "overlaps the guest link 169.254.0.20/30"},
		{"negative first index", Config{FirstIndex: -1}, "first index -1 outside [0, 32768)"},
		{"first index past capacity", Config{FirstIndex: 32768}, "first index 32768 outside [0, 32768)"},
		{"capacity from host range", Config{HostCIDR: p("10.11.0.0/24"), FirstIndex: 254}, "outside [0, 254)"},
		{"uplink with slash", Config{Uplink: "a/b"}, `uplink "a/b" is not an interface name`},
		{"uplink too long", Config{Uplink: "abcdefghijklmnop"}, "is not an interface name"},
		{"uplink is a slot", Config{Uplink: "ember-v3"}, "is a slot veth"},
		{"uplink ignored without egress", Config{Uplink: "a/b", NoEgress: true}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckValidation(t, tt.cfg.Validate(), tt.want, ErrInvalidConfig)
		})
	}
}

func TestBootArgs(t *testing.T) {
	want := "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"
	for _, i := range []int{0, 7, 2000} {
		if got := (Config{}).withDefaults().slot(i).BootArgs(); got != want {
			t.Errorf("slot %d BootArgs() = %q, want %q", i, got, want)
		}
	}
}

// checkValidation checks a Validate result: nil when want is "", else an
// error containing want and wrapping sentinel.
