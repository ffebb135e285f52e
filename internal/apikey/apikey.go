// Package apikey keeps the daemon's API key in a file of the data
// directory: created on first start, replaced whole by a rotation, and
// re-read by the running daemon whenever the file changes, so that
// `ember key rotate` takes effect without a restart. Comparisons take the
// same time whatever the guess, so the key cannot be found byte by byte
// from response times.
package apikey

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/fsutil"
)

// FileName is the key's file in the data directory.
const FileName = "api-key"

// prefix starts every key ember makes, so a key is recognisable in a
// secret scanner's findings.
const prefix = "ember_"

// New returns a fresh random key.
func New() string {
	raw := make([]byte, 24)
	rand.Read(raw)
	return prefix + hex.EncodeToString(raw)
}

// Load reads the key at path, creating it (mode 0600) when the file is
// missing or empty.
func Load(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if k := strings.TrimSpace(string(b)); k != "" {
			return k, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read api key %s: %w", path, err)
	}
	return Rotate(path)
}

// Rotate replaces the key at path with a fresh one and returns it. The
// file is replaced by a rename, so a daemon reading it sees the old key or
// the new, never a part of one.
func Rotate(path string) (string, error) {
	key := New()
	if err := fsutil.WriteFileAtomic(path, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write api key %s: %w", path, err)
	}
	return key, nil
}

// Equal reports whether got is want, in time that depends on their
// lengths only.
func Equal(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// File is the key as a running daemon holds it: read again whenever the
// file's modification time, size or inode changes (one stat per check,
// at most every recheck), so a rotation is in force within that time.
type File struct {
	path string

	// mu guards the fields below.
	mu      sync.Mutex
	key     string
	stamp   stamp
	checked time.Time
}

// recheck bounds how often File looks at the file.
const recheck = 200 * time.Millisecond

// stamp identifies one version of the file.
type stamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// Open loads the key at path (creating it when missing) and returns it
// as a File.
func Open(path string) (*File, error) {
	f := &File{path: path}
	if _, err := Load(path); err != nil {
		return nil, err
	}
	if err := f.reload(time.Now()); err != nil {
		return nil, err
	}
	return f, nil
}

// Path returns the key file's path.
func (f *File) Path() string { return f.path }

// Key returns the key in force. A file that cannot be read keeps the last
// key read: a rotation in progress never locks every client out.
func (f *File) Key() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if now.Sub(f.checked) >= recheck {
		f.reloadLocked(now)
	}
	return f.key
}

func (f *File) reload(now time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadLocked(now)
}

func (f *File) reloadLocked(now time.Time) error {
	f.checked = now
	st, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("stat api key %s: %w", f.path, err)
	}
	s := stamp{mod: st.ModTime(), size: st.Size(), ino: inode(st)}
	if s == f.stamp && f.key != "" {
		return nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("read api key %s: %w", f.path, err)
	}
	k := strings.TrimSpace(string(b))
	if k == "" {
		return fmt.Errorf("api key %s is empty", f.path)
	}
	f.key, f.stamp = k, s
	return nil
}
