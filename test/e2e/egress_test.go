package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/test/harness"
)

// The test's "internet": a namespace of its own, wired to the host by a veth
// that the daemon uses as its uplink. No packet leaves the machine.
const (
	outsideNS   = "ember-e2e-outside"
	uplinkLink  = "embe2eup"
	uplinkAddr  = "198.18.77.1"
	outsideAddr = "198.18.77.2"
)

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// outside builds the test internet and returns the URL of a web server in it.
func outside(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip")
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile("/proc/sys/net/ipv4/ip_forward", fwd, 0o644) })
	sh(t, "ip", "netns", "add", outsideNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", outsideNS).Run() })
	sh(t, "ip", "link", "add", uplinkLink, "type", "veth", "peer", "name", "eth0", "netns", outsideNS)
	t.Cleanup(func() { exec.Command("ip", "link", "del", uplinkLink).Run() })
	sh(t, "ip", "addr", "add", uplinkAddr+"/30", "dev", uplinkLink)
	sh(t, "ip", "link", "set", uplinkLink, "up")
	sh(t, "ip", "-n", outsideNS, "addr", "add", outsideAddr+"/30", "dev", "eth0")
	sh(t, "ip", "-n", outsideNS, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", outsideNS, "link", "set", "lo", "up")

	www := t.TempDir()
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("hello from outside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := exec.Command("ip", "netns", "exec", outsideNS, "busybox", "httpd", "-f", "-p", outsideAddr+":8000", "-h", www)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	return "http://" + outsideAddr + ":8000/"
}

func TestEgressPolicyInGuest(t *testing.T) {
	url := outside(t)
	d := startWith(t, harness.Options{SlotFirst: 3600, Uplink: uplinkLink})
	ctx := context.Background()

	// A service on the host's own address stands in for everything the
	// host runs: a guest must never reach it.
	hostSvc, err := net.Listen("tcp", uplinkAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostSvc.Close()
	go func() {
		for {
			c, err := hostSvc.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("HTTP/1.0 200 OK\r\n\r\nhost service\n"))
			c.Close()
		}
	}()

	sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// busybox 1.35's wget crashes on its own -T option; timeout(1) bounds it.
	fetch := func(target string) (string, bool) {
		t.Helper()
		res, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "timeout", Args: []string{"3", "wget", "-q", "-O", "-", target}})
		if err != nil {
			t.Fatal(err)
		}
		return string(res.Stdout), res.ExitCode == 0
	}
	on, off := true, false
	steps := []struct {
		name  string
		pol   *client.NetworkPolicy // nil: keep
		reach bool
	}{
		{"default policy reaches the internet", nil, true},
		{"internet off", &client.NetworkPolicy{Internet: &off}, false},
		{"internet off, outside allowed", &client.NetworkPolicy{Internet: &off, Allow: []string{"198.18.77.0/30"}}, true},
		{"deny beats allow", &client.NetworkPolicy{Internet: &off, Allow: []string{"198.18.0.0/15"}, Deny: []string{"198.18.77.2/32"}}, false},
		{"internet on, outside denied", &client.NetworkPolicy{Internet: &on, Deny: []string{"198.18.77.0/30"}}, false},
		{"internet on again", &client.NetworkPolicy{Internet: &on}, true},
	}
	for _, st := range steps {
		if st.pol != nil {
			if _, err := d.Client.SetNetwork(ctx, sb.ID, *st.pol); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
		}
		out, ok := fetch(url)
		if ok != st.reach || (ok && out != "hello from outside\n") {
			t.Errorf("%s: reached=%v (%q), want %v", st.name, ok, out, st.reach)
		}
	}
	if out, ok := fetch("http://" + hostSvc.Addr().String() + "/"); ok {
		t.Errorf("guest reached a host service: %q", out)
	}

	// A sandbox created with internet off is cut off from its first packet.
	sb2, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{Network: &client.NetworkPolicy{Internet: &off}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.Client.Exec(ctx, sb2.ID, client.ExecRequest{Cmd: "timeout", Args: []string{"3", "wget", "-q", "-O", "-", url}})
	if err != nil || res.ExitCode == 0 {
		t.Errorf("sandbox created offline reached the outside: %+v %v", res, err)
	}
}
