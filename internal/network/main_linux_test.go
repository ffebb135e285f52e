//go:build linux

package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/netns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Privileged tests use slot indexes in [testFirst, testLast]; each test takes
// its own sub-range so tests never share a name, and a daemon running on the
// same host (which starts at 0) is never touched.
const (
	testFirst = 2000
	testLast  = 2999
)

// TestMain runs the tests, then checks that no kernel object of the test
// range is left behind (removing what it finds, so one failure does not
// poison the next run). The host table is removed too when the tests created
// it.
func TestMain(m *testing.M) {
	root := os.Geteuid() == 0
	tableBefore := false
	if root {
		c, err := nftables.New()
		if err == nil {
			tableBefore, err = hostTableExists(c)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "check host table:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if !root {
		os.Exit(code)
	}
	var leaks []string
	for i := testFirst; i <= testLast; i++ {
		if l := settledLeftovers(i, nil); len(l) > 0 {
			leaks = append(leaks, l...)
			if err := remove(i, nil); err != nil {
				fmt.Fprintln(os.Stderr, "remove leaked slot:", err)
			}
		}
	}
	ls, _ := netlink.LinkList()
	for _, l := range ls {
		if n := l.Attrs().Name; len(n) > len(testUplinkPrefix) && n[:len(testUplinkPrefix)] == testUplinkPrefix {
			leaks = append(leaks, "link "+n)
			_ = deleteLink(n)
		}
	}
	entries, _ := os.ReadDir(netns.Dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), testNetnsPrefix) {
			leaks = append(leaks, "netns "+e.Name())
			_ = netns.Delete(e.Name())
		}
	}
	if len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "leak check: %d kernel objects left behind by the tests: %v\n", len(leaks), leaks)
		code = 1
	}
	if !tableBefore {
		if err := deleteHostTable(); err != nil {
			fmt.Fprintln(os.Stderr, "delete host table:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// leftovers describes what exists of slot index: its namespace, host veth,
// slots set element and, when hostAddr is given, the host route to it.
func leftovers(index int, hostAddr *netip.Addr) []string {
	var out []string
	if netns.Exists(NetnsName(index)) {
		out = append(out, "netns "+NetnsName(index))
	}
	if _, err := netlink.LinkByName(VethName(index)); err == nil {
		out = append(out, "link "+VethName(index))
	}
	names, err := listSlotElements()
	if err != nil {
		out = append(out, "set elements unreadable: "+err.Error())
	}
	for _, n := range names {
		if n == VethName(index) {
			out = append(out, "set element "+n)
		}
	}
	if hostAddr != nil {
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Dst: &net.IPNet{IP: hostAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}}, netlink.RT_FILTER_DST)
		if err != nil {
			out = append(out, "routes unreadable: "+err.Error())
		}
		for _, r := range routes {
			out = append(out, "route "+r.String())
		}
	}
	return out
}

// deleteHostTable removes the host table (tests leave the host as they
// found it).
func deleteHostTable() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.DelTable(hostTable)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// settledLeftovers is leftovers once the kernel has had time to reap the
// veths of deleted namespaces (see discard): it waits up to two seconds for
// them to go.
func settledLeftovers(index int, hostAddr *netip.Addr) []string {
	deadline := time.Now().Add(2 * time.Second)
	for {
		l := leftovers(index, hostAddr)
		if len(l) == 0 || time.Now().After(deadline) {
			return l
		}
		time.Sleep(5 * time.Millisecond)
	}
}
