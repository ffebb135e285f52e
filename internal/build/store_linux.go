//go:build linux

package build

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/template"
)

// The step cache on disk: <dir>/<key>/{entry.json,rootfs.ext4}. An entry
// is written in a hidden directory and renamed into place once complete,
// so a failed or killed step leaves nothing that looks finished; a step
// that changes only the state hard-links its parent's image.
const (
	entryFile = "entry.json"
	imageFile = "rootfs.ext4"
)

// entry is one cached step result.
type entry struct {
	Key    string `json:"key"`
	Parent string `json:"parent,omitempty"`
	// Step is what made it ("FROM debian:bookworm", "RUN …").
	Step    string    `json:"step"`
	State   state     `json:"state"`
	Kernel  string    `json:"kernel"`
	Created time.Time `json:"created"`
	// image is the entry's root image (not stored: it is in the entry's
	// directory).
	image string
}

// stepCache is the directory of cached step results.
type stepCache struct{ dir string }

// get returns the complete entry for key, if there is one, and marks it
// used (eviction removes the least recently used first).
func (c stepCache) get(key string) (entry, bool) {
	d := filepath.Join(c.dir, key)
	b, err := os.ReadFile(filepath.Join(d, entryFile))
	if err != nil {
		return entry{}, false
	}
	var e entry
	if json.Unmarshal(b, &e) != nil || e.Key != key {
		return entry{}, false
	}
	e.image = filepath.Join(d, imageFile)
	if _, err := os.Stat(e.image); err != nil {
		return entry{}, false
	}
	now := time.Now()
	os.Chtimes(filepath.Join(d, entryFile), now, now)
	return e, true
}

// put stores an entry whose image makeImage writes at the path it is
// given. On any failure nothing is stored.
func (c stepCache) put(e entry, makeImage func(dst string) error) (entry, error) {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return entry{}, fmt.Errorf("create step cache %q: %w", c.dir, err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	tmp := filepath.Join(c.dir, ".tmp-"+e.Key[:16]+"-"+hex.EncodeToString(b))
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return entry{}, fmt.Errorf("cache step %s: %w", e.Key[:12], err)
	}
	fail := func(err error) (entry, error) {
		return entry{}, errors.Join(fmt.Errorf("cache step %s: %w", e.Key[:12], err), os.RemoveAll(tmp))
	}
	if err := makeImage(filepath.Join(tmp, imageFile)); err != nil {
		return fail(err)
	}
	e.Created = time.Now().UTC()
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, entryFile), append(data, '\n'), 0o600); err != nil {
		return fail(err)
	}
	for _, p := range []string{filepath.Join(tmp, imageFile), filepath.Join(tmp, entryFile), tmp} {
		if err := template.Sync(p); err != nil {
			return fail(err)
		}
	}
	dst := filepath.Join(c.dir, e.Key)
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); errors.Is(err, fs.ErrExist) {
		// Made by another build meanwhile: the same inputs, the same
		// result; keep that one.
		os.RemoveAll(tmp)
	} else if err != nil {
		return fail(err)
	}
	if err := template.Sync(c.dir); err != nil {
		return entry{}, err
	}
	e.image = filepath.Join(dst, imageFile)
	return e, nil
}

// usage is what the cache holds: entries and allocated bytes (an image
// shared by hard links is counted once).
func (c stepCache) usage() (entries int, allocated int64) {
	seen := map[uint64]bool{}
	list, _ := os.ReadDir(c.dir)
	for _, d := range list {
		if strings.HasPrefix(d.Name(), ".") {
			continue
		}
		entries++
		var st unix.Stat_t
		if unix.Stat(filepath.Join(c.dir, d.Name(), imageFile), &st) == nil && !seen[st.Ino] {
			seen[st.Ino] = true
			allocated += st.Blocks * 512
		}
	}
	return entries, allocated
}

// evict removes the least recently used entries until the cache holds at
// most max allocated bytes, never one in keep (the layers of published
// templates). With leftovers (at start, when no build runs) the entries
// killed builds were writing go first.
func (c stepCache) evict(max int64, keep map[string]bool, leftovers bool) (removed int) {
	list, err := os.ReadDir(c.dir)
	if err != nil {
		return 0
	}
	type aged struct {
		key  string
		used time.Time
	}
	var cands []aged
	for _, d := range list {
		if strings.HasPrefix(d.Name(), ".tmp-") {
			if leftovers {
				os.RemoveAll(filepath.Join(c.dir, d.Name()))
			}
			continue
		}
		if keep[d.Name()] || strings.HasPrefix(d.Name(), ".") {
			continue
		}
		st, err := os.Stat(filepath.Join(c.dir, d.Name(), entryFile))
		if err != nil {
			continue // not an entry
		}
		cands = append(cands, aged{d.Name(), st.ModTime()})
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].used.Before(cands[j].used) })
	for _, a := range cands {
		if _, used := c.usage(); used <= max {
			break
		}
		if os.RemoveAll(filepath.Join(c.dir, a.key)) == nil {
			removed++
		}
	}
	return removed
}
