//go:build linux

package build

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/emberhq/ember/internal/template"
)

// The guest layer: what ember adds to every image a build starts from, so
// it boots as a sandbox. Its own busybox under /usr/lib/ember runs init
// and the guest's scripts (an image's tools are its own business), the
// agent is /usr/bin/ember-agent, bash is there (E2B's SDKs run everything
// through it) and so is the unprivileged account "user". /sbin/init and
// /etc/inittab become ember's; everything else of the image is kept.
const (
	// GuestBusybox is ember's busybox in a built template's guest.
	GuestBusybox = "/usr/lib/ember/busybox"
	guestRcS     = "/usr/lib/ember/rcS"
	// guestRecipe changes whenever the files below change.
	guestRecipe = "1"
)

const guestInittab = `# ember guest: busybox init. Output goes to the console (ttyS0).
::sysinit:` + guestRcS + `
::respawn:` + template.AgentPath + `
::ctrlaltdel:` + GuestBusybox + ` reboot -f
::shutdown:` + GuestBusybox + ` sync
`

// guestRcSScript mounts the kernel file systems with ember's busybox
// alone, whatever the image holds.
const guestRcSScript = `#!` + GuestBusybox + ` sh
# ember guest: mount the kernel filesystems, name the host, bring up lo.
B=` + GuestBusybox + `
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
$B mkdir -p /proc /sys /dev/pts /dev/shm /run /tmp
$B mount -t proc -o nosuid,nodev,noexec proc /proc
$B mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
$B mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
$B mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$B mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
$B mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
$B ln -sf /proc/self/fd /dev/fd
$B ln -sf /proc/self/fd/0 /dev/stdin
$B ln -sf /proc/self/fd/1 /dev/stdout
$B ln -sf /proc/self/fd/2 /dev/stderr
$B hostname -F /etc/hostname
$B ip link set lo up
echo "` + template.ReadyMarker + `"
`

// guestFiles are the binaries the guest layer carries.
type guestFiles struct {
	agent, busybox, bash []byte
}

// key names the guest layer's inputs, for base keys.
func (g guestFiles) key() string {
	return fmt.Sprintf("recipe %s agent %s busybox %s bash %s", guestRecipe, sha(g.agent), sha(g.busybox), sha(g.bash))
}

// readGuestFiles reads the host's busybox and static bash.
func readGuestFiles(agent []byte) (guestFiles, error) {
	if len(agent) == 0 {
		return guestFiles{}, template.ErrNoAgent
	}
	bb, err := os.ReadFile(template.HostBusybox)
	if err != nil {
		return guestFiles{}, fmt.Errorf("read busybox (apt-get install busybox-static): %w", err)
	}
	bash, err := os.ReadFile(template.HostBash)
	if err != nil {
		return guestFiles{}, fmt.Errorf("read bash (apt-get install bash-static): %w", err)
	}
	return guestFiles{agent: agent, busybox: bb, bash: bash}, nil
}

// applyGuest adds the guest layer to an unpacked root filesystem.
func applyGuest(dir string, g guestFiles) error {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open image root: %w", err)
	}
	defer r.Close()
	for _, d := range []struct {
		path string
		mode fs.FileMode
	}{{"usr/lib/ember", 0o755}, {"usr/bin", 0o755}, {"sbin", 0o755}, {"etc", 0o755}, {"proc", 0o555},
		{"sys", 0o555}, {"dev", 0o755}, {"run", 0o755}, {"tmp", fs.ModeSticky | 0o777}, {"var/log", 0o755},
		{"root", 0o700}, {"home", 0o755}} {
		if _, err := r.Stat(d.path); err == nil {
			continue
		}
		if err := r.MkdirAll(d.path, 0o755); err != nil {
			return fmt.Errorf("guest layer: create /%s: %w", d.path, err)
		}
		if err := r.Chmod(d.path, d.mode); err != nil {
			return fmt.Errorf("guest layer: chmod /%s: %w", d.path, err)
		}
	}
	write := func(p string, data []byte, mode fs.FileMode) error {
		p = strings.TrimPrefix(p, "/")
		// Removed first: the image may hold it as a link, or hard-linked
		// to another name.
		if err := r.RemoveAll(p); err != nil {
			return fmt.Errorf("guest layer: replace /%s: %w", p, err)
		}
		if err := r.WriteFile(p, data, mode); err != nil {
			return fmt.Errorf("guest layer: write /%s: %w", p, err)
		}
		return r.Chmod(p, mode)
	}
	link := func(p, target string) error {
		p = strings.TrimPrefix(p, "/")
		if err := r.RemoveAll(p); err != nil {
			return fmt.Errorf("guest layer: replace /%s: %w", p, err)
		}
		return r.Symlink(target, p)
	}
	missing := func(p string) bool {
		st, err := r.Stat(strings.TrimPrefix(p, "/")) // follows links: a dangling one is missing
		return err != nil || st.Mode().IsRegular() && st.Size() == 0
	}
	steps := []func() error{
		func() error { return write(GuestBusybox, g.busybox, 0o755) },
		func() error { return write(template.AgentPath, g.agent, 0o755) },
		func() error { return write(guestRcS, []byte(guestRcSScript), 0o755) },
		func() error { return write("/etc/inittab", []byte(guestInittab), 0o644) },
		func() error { return link("/sbin/init", GuestBusybox) },
		func() error { return write("/etc/hostname", []byte("ember\n"), 0o644) },
	}
	if missing("/bin/bash") {
		steps = append(steps, func() error { return write("/bin/bash", g.bash, 0o755) })
	}
	if missing("/bin/sh") {
		steps = append(steps, func() error { return link("/bin/sh", GuestBusybox) })
	}
	if missing("/etc/resolv.conf") {
		steps = append(steps, func() error {
			return write("/etc/resolv.conf", []byte("nameserver 8.8.8.8\nnameserver 1.1.1.1\n"), 0o644)
		})
	}
	if missing("/etc/hosts") {
		steps = append(steps, func() error {
			return write("/etc/hosts", []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tember\n"), 0o644)
		})
	}
	if missing("/etc/nsswitch.conf") {
		steps = append(steps, func() error {
			return write("/etc/nsswitch.conf", []byte("passwd: files\ngroup: files\nhosts: files dns\n"), 0o644)
		})
	}
	steps = append(steps, func() error { return addUser(r) })
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// guestUser is the unprivileged account every template has, as in E2B.
const guestUser = "user"

// addUser makes sure the image has root and "user" (uid 1000 unless that
// is taken) with a home directory, keeping every account it has.
func addUser(r *os.Root) error {
	passwd, _ := r.ReadFile("etc/passwd")
	group, _ := r.ReadFile("etc/group")
	users := parseDB(passwd)
	groups := parseDB(group)
	if _, ok := users["root"]; !ok {
		passwd = appendLine(passwd, "root:x:0:0:root:/root:/bin/sh")
	}
	if _, ok := groups["root"]; !ok {
		group = appendLine(group, "root:x:0:")
	}
	uid, gid := 1000, 1000
	if u, ok := users[guestUser]; ok {
		uid, _ = strconv.Atoi(field(u, 2))
		gid, _ = strconv.Atoi(field(u, 3))
	} else {
		taken := map[string]bool{}
		for _, u := range users {
			taken[field(u, 2)] = true
		}
		for taken[strconv.Itoa(uid)] {
			uid++
		}
		gid = uid
		passwd = appendLine(passwd, fmt.Sprintf("%s:x:%d:%d:%s:/home/%s:/bin/bash", guestUser, uid, gid, guestUser, guestUser))
		if _, ok := groups[guestUser]; !ok {
			group = appendLine(group, fmt.Sprintf("%s:x:%d:", guestUser, gid))
		} else {
			gid, _ = strconv.Atoi(field(groups[guestUser], 2))
		}
		if shadow, err := r.ReadFile("etc/shadow"); err == nil {
			if err := r.WriteFile("etc/shadow", appendLine(shadow, guestUser+":*:0:0:99999:7:::"), 0o640); err != nil {
				return fmt.Errorf("guest layer: write /etc/shadow: %w", err)
			}
		}
	}
	if err := r.WriteFile("etc/passwd", passwd, 0o644); err != nil {
		return fmt.Errorf("guest layer: write /etc/passwd: %w", err)
	}
	if err := r.WriteFile("etc/group", group, 0o644); err != nil {
		return fmt.Errorf("guest layer: write /etc/group: %w", err)
	}
	home := "home/" + guestUser
	if _, err := r.Stat(home); errors.Is(err, fs.ErrNotExist) {
		if err := r.MkdirAll(home, 0o755); err != nil {
			return fmt.Errorf("guest layer: create /%s: %w", home, err)
		}
		if err := r.Lchown(home, uid, gid); err != nil {
			return fmt.Errorf("guest layer: chown /%s: %w", home, err)
		}
	}
	return nil
}

// parseDB reads /etc/passwd or /etc/group lines by their first field.
func parseDB(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, ":")
		out[name] = line
	}
	return out
}

func field(line string, i int) string {
	f := strings.Split(line, ":")
	if i < len(f) {
		return f[i]
	}
	return ""
}

func appendLine(b []byte, line string) []byte {
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return append(b, line+"\n"...)
}

// lookupOwner resolves a COPY --chown spec ("user", "user:group",
// "1000:1000") against an image's passwd and group files.
func lookupOwner(spec string, passwd, group []byte) (uid, gid int, err error) {
	u, g, hasGroup := strings.Cut(spec, ":")
	users, groups := parseDB(passwd), parseDB(group)
	if n, err := strconv.Atoi(u); err == nil {
		uid, gid = n, n
		for _, line := range users {
			if field(line, 2) == u {
				gid, _ = strconv.Atoi(field(line, 3))
			}
		}
	} else if line, ok := users[u]; ok {
		uid, _ = strconv.Atoi(field(line, 2))
		gid, _ = strconv.Atoi(field(line, 3))
	} else {
		return 0, 0, fmt.Errorf("no user %q in the image's /etc/passwd", u)
	}
	if !hasGroup {
		return uid, gid, nil
	}
	if n, err := strconv.Atoi(g); err == nil {
		return uid, n, nil
	}
	line, ok := groups[g]
	if !ok {
		return 0, 0, fmt.Errorf("no group %q in the image's /etc/group", g)
	}
	gid, _ = strconv.Atoi(field(line, 2))
	return uid, gid, nil
}

// guestPath cleans an absolute path inside the guest.
func guestPath(p string) string { return path.Clean("/" + p) }
