package fsutil

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	for _, content := range []string{"first", "second, longer than the first"} {
		if err := WriteFileAtomic(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != content {
			t.Fatalf("read back %q, %v; want %q", got, err, content)
		}
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("left beside it: %v", entries)
	}
	// A write that cannot happen leaves nothing behind.
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "x"), []byte("x"), 0o600); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

func TestTryLockAndHeld(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ember.lock")
	if Held(p) {
		t.Fatal("a missing lock file is held")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("Held created the lock file: %v", err)
	}
	unlock, err := TryLock(p)
	if err != nil {
		t.Fatal(err)
	}
	if !Held(p) {
		t.Fatal("a taken lock is not held")
	}
	if _, err := TryLock(p); !errors.Is(err, ErrLocked) {
		t.Fatalf("second TryLock: %v, want ErrLocked", err)
	}
	unlock()
	if Held(p) {
		t.Fatal("a released lock is held")
	}
	unlock, err = TryLock(p)
	if err != nil {
		t.Fatalf("TryLock after release: %v", err)
	}
	unlock()
}
