package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// What the VM tier and the density benchmark read of a sandbox's VMM on
// the host: its process, how its guest's RAM is mapped, its memory, and
// QMP for what only QEMU can show (a dump of guest memory).

// SandboxDir is a sandbox's directory under the daemon's data directory.
func (d *Daemon) SandboxDir(id string) string { return filepath.Join(d.DataDir, "sandboxes", id) }

// VMMPID returns the pid of a running sandbox's VMM, from the pid file QEMU
// writes in the sandbox's directory.
func (d *Daemon) VMMPID(id string) (int, error) {
	b, err := os.ReadFile(filepath.Join(d.SandboxDir(id), "vmm.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Mapping is the kB figures of one mapping in /proc/<pid>/smaps.
type Mapping struct {
	Path string
	// Start is the mapping's first address in the process; Perms its
	// protection as maps shows it ("rwxp").
	Start                      uint64
	Perms                      string
	Size, Rss, Pss             int64
	SharedClean, SharedDirty   int64
	PrivateClean, PrivateDirty int64
	Anonymous                  int64
}

// Private is the mapping's memory no other process shares, in kB.
func (m Mapping) Private() int64 { return m.PrivateClean + m.PrivateDirty }

// GuestRAM returns the mapping of a QEMU's guest RAM file: its own file
// on /dev/shm (a cold-booted guest), or the sealed copy of a snapshot's
// memory it maps privately (a restored guest; a memfd).
func GuestRAM(pid int) (Mapping, error) {
	maps, err := Smaps(pid)
	if err != nil {
		return Mapping{}, err
	}
	for _, m := range maps {
		if strings.HasPrefix(m.Path, "/memfd:ember-guest-ram") || strings.HasPrefix(m.Path, "/dev/shm/ember-") {
			return m, nil
		}
	}
	return Mapping{}, fmt.Errorf("process %d maps no guest ram file", pid)
}

// Smaps reads every mapping of process pid.
func Smaps(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			m := Mapping{}
			start, _, _ := strings.Cut(fields[0], "-")
			m.Start, _ = strconv.ParseUint(start, 16, 64)
			m.Perms = fields[1]
			if len(fields) >= 6 {
				m.Path = fields[5]
			}
			out = append(out, m)
			continue
		}
		if len(out) == 0 || len(fields) != 3 || fields[2] != "kB" {
			continue
		}
		n, _ := strconv.ParseInt(fields[1], 10, 64)
		m := &out[len(out)-1]
		switch strings.TrimSuffix(fields[0], ":") {
		case "Size":
			m.Size = n
		case "Rss":
			m.Rss = n
		case "Pss":
			m.Pss = n
		case "Shared_Clean":
			m.SharedClean = n
		case "Shared_Dirty":
			m.SharedDirty = n
		case "Private_Clean":
			m.PrivateClean = n
		case "Private_Dirty":
			m.PrivateDirty = n
		case "Anonymous":
			m.Anonymous = n
		}
	}
	return out, sc.Err()
}

// Meminfo returns the fields of /proc/meminfo, in kB.
func Meminfo() (map[string]int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// RSS returns a process's resident memory in kB (VmRSS).
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, errors.New("no VmRSS")
}

// DaemonPID returns the daemon's process id.
func (d *Daemon) DaemonPID() int { return d.cmd.Process.Pid }

// GuestMemory reads a running sandbox's guest-physical memory (its first
// size bytes) as its VMM sees it, through /proc/<pid>/mem at its guest
// RAM mapping: the pages the guest wrote where it has its own, the saved
// memory it maps elsewhere. (QEMU itself cannot be asked: a confined QEMU
// can write no file.)
func (d *Daemon) GuestMemory(id string, size int64) ([]byte, error) {
	pid, err := d.VMMPID(id)
	if err != nil {
		return nil, err
	}
	ram, err := GuestRAM(pid)
	if err != nil {
		return nil, err
	}
	if size > ram.Size<<10 {
		return nil, fmt.Errorf("guest ram of process %d is %d kB, not %d bytes", pid, ram.Size, size)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, size)
	if _, err := f.ReadAt(buf, int64(ram.Start)); err != nil {
		return nil, fmt.Errorf("read guest ram of process %d: %w", pid, err)
	}
	return buf, nil
}

// PagesHolding returns the page frame numbers (4 KiB pages) of mem whose
// page holds marker.
func PagesHolding(mem, marker []byte) map[int]bool {
	out := map[int]bool{}
	for off := 0; off < len(mem); {
		i := bytes.Index(mem[off:], marker)
		if i < 0 {
			break
		}
		out[(off+i)/4096] = true
		off += i + len(marker)
	}
	return out
}

// CPUSeconds returns the CPU time (user and system) process pid has used.
func CPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short stat of process %d", pid)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (utime + stime) / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times.
const clockTicks = 100
