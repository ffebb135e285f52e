//go:build linux

package network

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/runner"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
)

// testNetnsPrefix starts every namespace a test creates besides slots; the
// leak check looks for it.
const testNetnsPrefix = "embertest-"

// fakeHost creates a namespace that stands in for the host, with lo up, and
// returns its path. It is deleted when the test ends, with everything in it.
func fakeHost(t *testing.T, name string) string {
	t.Helper()
	if err := netns.Create(name); err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() { netns.Delete(name) })
	return netns.Dir + "/" + name
}

// dockerForward gives the namespace at path what Docker leaves on a host:
// table ip filter with a FORWARD chain whose policy is drop.
func dockerForward(t *testing.T, path string) {
	t.Helper()
	err := netns.Do(path, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		drop := nftables.ChainPolicyDrop
		c.AddTable(foreignFilter)
		c.AddChain(&nftables.Chain{Name: foreignForwardName, Table: foreignFilter, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
		return c.Flush()
	})
	if err != nil {
		t.Fatalf("add ip filter FORWARD policy drop: %v", err)
	}
}

// deleteForeignRules removes ember's rules from the ip filter FORWARD chain
// of the namespace at path and returns how many it removed.
func deleteForeignRules(t *testing.T, path string) int {
	t.Helper()
	n := 0
	err := netns.Do(path, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		ch := &nftables.Chain{Name: foreignForwardName, Table: foreignFilter}
		rules, err := c.GetRules(foreignFilter, ch)
		if err != nil {
			return err
		}
		for _, r := range rules {
			if tag, _ := userdata.GetString(r.UserData, userdata.TypeComment); strings.HasPrefix(tag, foreignTagPrefix) {
				if err := c.DelRule(r); err != nil {
					return err
				}
				n++
			}
		}
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestForwardPolicyDrop(t *testing.T) {
	testutil.RequireRoot(t)
	host := fakeHost(t, testNetnsPrefix+"host2500")
	dockerForward(t, host)
	uplink := testUplinkPrefix + "2500"
	port := outsideWorldOf(t, uplink, host, testNetnsPrefix+"out2500")
	cfg := Config{FirstIndex: 2500, Uplink: uplink, HostNetns: host}
	p := testPool(t, cfg)
	s := getSlot(t, p)
	guestPort := serveGuest(t, s)
	far := netip.AddrPortFrom(farAddr, uint16(port))

	if !reaches(s, far) {
		t.Fatalf("guest cannot reach %s through a host whose FORWARD policy is drop", far)
	}
	err := netns.Do(host, func() error {
		_, err := exchange(netip.AddrPortFrom(s.HostAddr, uint16(guestPort)), netip.Addr{}, 2*time.Second)
		return err
	})
	if err != nil {
		t.Errorf("host -> guest: %v", err)
	}
	// A second pool (a restarted daemon) adds nothing twice.
	second := testPool(t, cfg)
	second.Close()
	if n := deleteForeignRules(t, host); n != len(foreignForwardRules()) {
		t.Errorf("ip filter FORWARD held %d ember rules, want %d", n, len(foreignForwardRules()))
	}
	// Control: without them the drop policy wins.
	if reaches(s, far) {
		t.Errorf("control: guest reaches %s with ember's FORWARD rules removed", far)
	}
}

func TestForwardRulesReadableByIptables(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "iptables")
	host := fakeHost(t, testNetnsPrefix+"host2510")
	dockerForward(t, host)
	p := testPool(t, Config{FirstIndex: 2510, HostNetns: host})
	p.Close()
	var out []byte
	err := netns.Do(host, func() error {
		var err error
		out, err = runner.Run(context.Background(), "iptables", "-S", "FORWARD")
		return err
	})
	if err != nil {
		t.Fatalf("iptables -S FORWARD: %v", err)
	}
	// Docker manages this chain with iptables: ember's rules must read back
	// as plain iptables rules, not make the table unreadable.
	for _, want := range []string{
		"-P FORWARD DROP",
		`-A FORWARD -o ember-v+ -m comment --comment "ember: slot traffic out" -j ACCEPT`,
		`-A FORWARD -i ember-v+ -m comment --comment "ember: slot traffic in" -j ACCEPT`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("iptables -S FORWARD lacks %q:\n%s", want, out)
		}
	}
}
