package apikey

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadCreatesOnceAndKeeps(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	k1, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k1, prefix) || len(k1) != len(prefix)+48 {
		t.Fatalf("key %q", k1)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", st.Mode(), err)
	}
	k2, err := Load(path)
	if err != nil || k2 != k1 {
		t.Fatalf("second load %q %v, want %q", k2, err, k1)
	}
}

func TestFileSeesRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	old := f.Key()
	rotated, err := Rotate(path)
	if err != nil {
		t.Fatal(err)
	}
	if rotated == old {
		t.Fatal("rotation kept the key")
	}
	deadline := time.Now().Add(2 * time.Second)
	for f.Key() != rotated {
		if time.Now().After(deadline) {
			t.Fatalf("key still %q after rotation to %q", f.Key(), rotated)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFileKeepsKeyWhenFileGoes(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	k := f.Key()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(recheck + 10*time.Millisecond)
	if got := f.Key(); got != k {
		t.Fatalf("key %q after the file went, want the last one %q", got, k)
	}
}

func TestEqual(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want string
		ok        bool
	}{
		{"same", "ember_abc", "ember_abc", true},
		{"other", "ember_abd", "ember_abc", false},
		{"prefix", "ember_ab", "ember_abc", false},
		{"empty guess", "", "ember_abc", false},
		{"no key set", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if Equal(tc.got, tc.want) != tc.ok {
				t.Fatalf("Equal(%q, %q) = %v", tc.got, tc.want, !tc.ok)
			}
		})
	}
}
