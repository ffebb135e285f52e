package testutil

import (
	"errors"
	"strings"
	"sync"
	"testing"
)

// SyncBuffer collects output (a logger's, say) that several goroutines
// write; String returns what was written so far.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// CheckValidation checks a Validate result: nil when want is "", else an
// error containing want that wraps sentinel.
func CheckValidation(t testing.TB, err error, want string, sentinel error) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("Validate() = %v, want nil", err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Validate() = %v, want error containing %q", err, want)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("Validate() = %v, not %v", err, sentinel)
	}
}
