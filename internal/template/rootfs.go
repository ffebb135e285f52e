package template

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/emberhq/ember/internal/runner"
)

const (
	// rootfsRecipeVersion changes whenever the staged contents or the mkfs
	// options change, so images built by an older recipe are rebuilt.
	rootfsRecipeVersion = "4"
	// DefaultRootfsSize is the guest's disk size: room to write, while the
	// sparse image allocates only what the files use.
	DefaultRootfsSize int64 = 1 << 30
	// ReadyMarker is the console line the guest's init prints once the system
	// is up, just before it starts the agent.
	ReadyMarker = "ember-guest: ready"
	// AgentPath is where the guest agent lives inside the image.
	AgentPath = "/usr/bin/ember-agent"
	// rootfsLabel is the ext4 volume label.
	rootfsLabel = "ember-root"
	// hostBusybox is the static busybox from Debian's busybox-static.
	hostBusybox = "/bin/busybox"
	// hostBash is the static bash from Debian's bash-static: E2B's SDKs
	// run every command as /bin/bash -l -c and every terminal as
	// /bin/bash -i -l, and busybox has no bash applet.
	hostBash = "/bin/bash-static"
	// guestHostname is every guest's hostname.
	guestHostname = "ember"
)

// userUID is the unprivileged user E2B sandboxes run commands as by default.
const userUID = 1000

// inittab starts the system with rcS, then the agent as init's child,
// restarted whenever it exits. No getty: the agent is the only way in, and
// the serial console only carries kernel and init output.
const inittab = `# ember guest: busybox init. Output goes to the console (ttyS0).
::sysinit:/etc/init.d/rcS
::respawn:` + AgentPath + `
::ctrlaltdel:/sbin/reboot -f
::shutdown:/bin/sync
`

// fstab lists the kernel filesystems rcS mounts with one `mount -a`: every
// command is a fork and exec of busybox, slow under software emulation.
const fstab = `# ember guest: kernel filesystems (the root is mounted by the kernel).
proc	/proc	proc	nosuid,nodev,noexec	0 0
sysfs	/sys	sysfs	nosuid,nodev,noexec	0 0
cgroup2	/sys/fs/cgroup	cgroup2	nosuid,nodev,noexec	0 0
devpts	/dev/pts	devpts	nosuid,noexec,gid=5,mode=620,ptmxmode=666	0 0
tmpfs	/dev/shm	tmpfs	nosuid,nodev,mode=1777	0 0
tmpfs	/tmp	tmpfs	nosuid,nodev,mode=1777	0 0
tmpfs	/run	tmpfs	nosuid,nodev,mode=755	0 0
`

// rcS brings the system up. devtmpfs is already mounted on /dev by the kernel
// (CONFIG_DEVTMPFS_MOUNT) and eth0 configured by its ip= argument; /dev/pts
// and /dev/shm live on devtmpfs, so they are made here, not in the image.
const rcS = `#!/bin/sh
# ember guest: mount the kernel filesystems, name the host, bring up lo.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mkdir -p /dev/pts /dev/shm
mount -a
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
hostname -F /etc/hostname
ip link set lo up
echo "` + ReadyMarker + `"
`

// entry is one thing staged into the image.
type entry struct {
	path     string      // relative to the image root
	mode     fs.FileMode // fs.ModeDir for directories, fs.ModeSymlink for links
	data     []byte      // file contents
	target   string      // symlink target
	uid, gid int
}

// recipe lists what goes into the root filesystem, in creation order
// (parents first). applets are busybox's install paths (`busybox
// --list-full`), each becoming a symlink to /bin/busybox; bash becomes
// /bin/bash.
func recipe(agent, busybox, bash []byte, applets []string) []entry {
	dir := func(p string, mode fs.FileMode) entry { return entry{path: p, mode: fs.ModeDir | mode} }
	file := func(p string, perm fs.FileMode, data string) entry {
		return entry{path: p, mode: perm, data: []byte(data)}
	}
	es := []entry{
		dir("bin", 0o755), dir("sbin", 0o755), dir("usr", 0o755), dir("usr/bin", 0o755),
		dir("usr/sbin", 0o755), dir("etc", 0o755), dir("etc/init.d", 0o755),
		dir("dev", 0o755), dir("proc", 0o555), dir("sys", 0o555), dir("run", 0o755),
		dir("tmp", fs.ModeSticky|0o777), dir("root", 0o700), dir("home", 0o755),
		{path: "home/user", mode: fs.ModeDir | 0o755, uid: userUID, gid: userUID},
		dir("mnt", 0o755), dir("var", 0o755), dir("var/tmp", fs.ModeSticky|0o777), dir("var/log", 0o755),
		{path: "bin/busybox", mode: 0o755, data: busybox},
		{path: "bin/bash", mode: 0o755, data: bash},
		{path: strings.TrimPrefix(AgentPath, "/"), mode: 0o755, data: agent},
		file("etc/inittab", 0o644, inittab),
		file("etc/init.d/rcS", 0o755, rcS),
		file("etc/fstab", 0o644, fstab),
		file("etc/hostname", 0o644, guestHostname+"\n"),
		file("etc/hosts", 0o644, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t"+guestHostname+"\n"),
		// Public resolvers, as E2B sandboxes use; egress policy decides
		// whether they are reachable.
		file("etc/resolv.conf", 0o644, "nameserver 8.8.8.8\nnameserver 1.1.1.1\n"),
		file("etc/nsswitch.conf", 0o644, "passwd: files\ngroup: files\nhosts: files dns\n"),
		file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"+
			fmt.Sprintf("user:x:%d:%d:user:/home/user:/bin/bash\n", userUID, userUID)+
			"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
		file("etc/group", 0o644, "root:x:0:\ntty:x:5:\n"+
			fmt.Sprintf("user:x:%d:\n", userUID)+"nogroup:x:65534:\n"),
		file("etc/shadow", 0o640, "root:*:0:0:99999:7:::\nuser:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n"),
	}
	taken := make(map[string]bool, len(es))
	for _, e := range es {
		taken[e.path] = true
	}
	for _, a := range applets {
		a = strings.Trim(filepath.Clean("/"+a), "/")
		if a == "" || taken[a] {
			continue
		}
		taken[a] = true
		if d := filepath.Dir(a); !taken[d] && d != "." {
			// An applet in a directory the recipe does not list yet.
			for _, p := range parents(d) {
				if !taken[p] {
					taken[p] = true
					es = append(es, dir(p, 0o755))
				}
			}
		}
		es = append(es, entry{path: a, mode: fs.ModeSymlink | 0o777, target: hostBusybox})
	}
	return es
}

// parents returns d and its ancestors, outermost first ("a/b" → "a", "a/b").
func parents(d string) []string {
	var out []string
	for ; d != "." && d != "/"; d = filepath.Dir(d) {
		out = append([]string{d}, out...)
	}
	return out
}

// stage writes the entries under root. Ownership is set only when running
// as root (mkfs.ext4 -d copies owners from the staged tree; a non-root build
// gets the builder's uid everywhere, fine for tests, wrong for real guests).
func stage(root string, es []entry) error {
	chown := os.Geteuid() == 0
	for _, e := range es {
		p := filepath.Join(root, e.path)
		var err error
		switch {
		case e.mode&fs.ModeDir != 0:
			err = os.Mkdir(p, e.mode.Perm())
		case e.mode&fs.ModeSymlink != 0:
			err = os.Symlink(e.target, p)
		default:
			err = os.WriteFile(p, e.data, e.mode.Perm())
		}
		if err != nil {
			return fmt.Errorf("stage %q: %w", e.path, err)
		}
		if e.mode&fs.ModeSymlink != 0 {
			if chown {
				err = os.Lchown(p, e.uid, e.gid)
			}
		} else {
			// Mkdir and WriteFile apply the umask and drop the sticky bit.
			err = os.Chmod(p, e.mode.Perm()|e.mode&fs.ModeSticky)
			if err == nil && chown {
				err = os.Chown(p, e.uid, e.gid)
			}
		}
		if err != nil {
			return fmt.Errorf("stage %q: %w", e.path, err)
		}
	}
	return nil
}

// busyboxApplets lists the install paths of the applets a busybox binary
// provides.
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := runner.Run(ctx, busybox, "--list-full")
	if err != nil {
		return nil, fmt.Errorf("list busybox applets: %w", err)
	}
	return strings.Fields(string(out)), nil
}

// makeExt4 builds a sparse ext4 image of the given size from a staged tree,
// without mounting anything. Inode tables are initialized here, once, instead
// of by the guest kernel's lazy init thread in every sandbox (which would
// write them into each sandbox's copy-on-write layer); the zeros mkfs writes
// for them and for the journal are then turned back into holes.
func makeExt4(ctx context.Context, staging, image string, size int64) error {
	_, err := runner.Run(ctx, "mkfs.ext4", "-F", "-q",
		"-d", staging,
		"-L", rootfsLabel,
		"-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
		image, fmt.Sprintf("%dk", size/1024))
	if err != nil {
		return fmt.Errorf("make ext4 image %q: %w", image, err)
	}
	return digHoles(image)
}

// rootfsKey names a root filesystem build by everything that goes into it.
// The kernel key is part of it so a template's kernel and image are always
// rebuilt together.
func rootfsKey(kernelKey, agentSHA, busyboxSHA, bashSHA string, size int64) string {
	h := sha256.New()
	fmt.Fprintf(h, "ember rootfs\nrecipe %s\nkernel %s\nagent %s\nbusybox %s\nbash %s\nsize %d\n",
		rootfsRecipeVersion, kernelKey, agentSHA, busyboxSHA, bashSHA, size)
	return hex.EncodeToString(h.Sum(nil))
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
