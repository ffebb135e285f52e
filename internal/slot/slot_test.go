package slot

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
)

func TestPolicyValidate(t *testing.T) {
	p := netip.MustParsePrefix
	many := make([]netip.Prefix, maxPolicyPrefixes+1)
	for i := range many {
		many[i] = p("10.0.0.0/8")
	}
	tests := []struct {
		name string
		pol  Policy
		want string // substring of the error; "" for valid
	}{
		{"zero value", Policy{}, ""},
		{"default", DefaultPolicy, ""},
		{"lists and group", Policy{Allow: []netip.Prefix{p("1.2.3.0/24")}, Deny: []netip.Prefix{p("1.2.3.4/32")}, Group: "team-a_1.x"}, ""},
		{"invalid prefix", Policy{Allow: []netip.Prefix{{}}}, "allow prefix invalid Prefix is not a prefix"},
		{"ipv6", Policy{Deny: []netip.Prefix{p("fd00::/8")}}, "deny prefix fd00::/8 is not IPv4"},
		{"host bits", Policy{Allow: []netip.Prefix{p("1.2.3.4/24")}}, "has host bits set (want 1.2.3.0/24)"},
		{"too many", Policy{Deny: many}, "deny list has 257 prefixes"},
		{"group charset", Policy{Group: "a b"}, `group "a b" may hold only`},
		{"group length", Policy{Group: strings.Repeat("g", 64)}, "longer than 63"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckValidation(t, tt.pol.Validate(), tt.want, ErrInvalidPolicy)
		})
	}
}

func TestBootArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    Slot
		want string
	}{
		{"namespace slot", Slot{}, "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"},
		{"bridge slot", Slot{GuestAddr: netip.MustParseAddr("172.30.0.2"), Gateway: netip.MustParseAddr("172.30.0.1"), GuestBits: 24},
			"ip=172.30.0.2::172.30.0.1:255.255.255.0::eth0:off"},
	} {
		if got := tc.s.BootArgs(); got != tc.want {
			t.Errorf("%s: BootArgs() = %q, want %q", tc.name, got, tc.want)
		}
	}
}
