package e2b

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"go4.org/netipx"
)

// TestPolicyKeepsE2BsOutcome: for each address, ember's policy (deny, then
// allow, then internet) decides as E2B's lists do (allow, then deny, then
// allow_internet_access).
func TestPolicyKeepsE2BsOutcome(t *testing.T) {
	no := false
	cases := []struct {
		name            string
		internet        *bool
		allow, deny     []string
		reach, blocked  []string
		wantNotServed   bool
		wantInvalidText string
	}{
		{name: "defaults", reach: []string{"8.8.8.8"}},
		{name: "no internet", internet: &no, blocked: []string{"8.8.8.8"}},
		{name: "deny all but one", allow: []string{"8.8.8.8"}, deny: []string{"0.0.0.0/0"},
			reach: []string{"8.8.8.8"}, blocked: []string{"1.1.1.1", "8.8.4.4"}},
		{name: "allow wins inside a denied range", allow: []string{"10.1.2.3"}, deny: []string{"10.0.0.0/8"},
			reach: []string{"10.1.2.3", "192.168.1.1"}, blocked: []string{"10.1.2.4", "10.200.0.1"}},
		{name: "bare addresses", deny: []string{"1.1.1.1"}, reach: []string{"1.1.1.2"}, blocked: []string{"1.1.1.1"}},
		{name: "domain names", allow: []string{"example.com"}, wantNotServed: true},
		{name: "garbage", deny: []string{"10.0.0.0/99"}, wantInvalidText: `denyOut: "10.0.0.0/99"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pol, err := policy(tc.internet, tc.allow, tc.deny)
			var ns errNotServed
			var bad *badRequest
			switch {
			case tc.wantNotServed:
				if !errors.As(err, &ns) {
					t.Fatalf("err %v, want not served", err)
				}
				return
			case tc.wantInvalidText != "":
				if !errors.As(err, &bad) || !strings.Contains(bad.msg, tc.wantInvalidText) {
					t.Fatalf("err %v, want invalid %q", err, tc.wantInvalidText)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			// ember's order: deny, then allow, then internet.
			reaches := func(a netip.Addr) bool {
				var deny, allow netipx.IPSetBuilder
				for _, p := range pol.Deny {
					deny.AddPrefix(p)
				}
				for _, p := range pol.Allow {
					allow.AddPrefix(p)
				}
				d, _ := deny.IPSet()
				al, _ := allow.IPSet()
				switch {
				case d.Contains(a):
					return false
				case al.Contains(a):
					return true
				}
				return pol.Internet
			}
			for _, s := range tc.reach {
				if !reaches(netip.MustParseAddr(s)) {
					t.Errorf("%s blocked by %+v", s, pol)
				}
			}
			for _, s := range tc.blocked {
				if reaches(netip.MustParseAddr(s)) {
					t.Errorf("%s reachable through %+v", s, pol)
				}
			}
		})
	}
}
