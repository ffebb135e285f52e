package cleanup

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// recorder hands out releases that log their name when run and fail while
// their name is in failing.
type recorder struct {
	ran     []string
	failing map[string]bool
}

func (r *recorder) release(name string) func(context.Context) error {
	return func(ctx context.Context) error {
		if ctx.Err() != nil {
			return errors.New("released under a cancelled context")
		}
		r.ran = append(r.ran, name)
		if r.failing[name] {
			return errors.New(name + " is busy")
		}
		return nil
	}
}

func sandboxStack(r *recorder) *Stack {
	s := &Stack{}
	for _, e := range []struct {
		scope Scope
		name  string
	}{
		{Anchor, "record"}, {Anchor, "registration"},
		{Storage, "dir"}, {Storage, "disk"},
		{Runtime, "disk attachment"}, {Runtime, "slot"}, {Runtime, "vmm"},
	} {
		s.Push(e.scope, e.name, r.release(e.name))
	}
	return s
}

func TestRelease(t *testing.T) {
	for _, tc := range []struct {
		name    string
		through Scope
		failing []string
		ran     []string
		left    int
		err     string
	}{
		{"pause", Runtime, nil, []string{"vmm", "slot", "disk attachment"}, 4, ""},
		{"fail", Storage, nil, []string{"vmm", "slot", "disk attachment", "disk", "dir"}, 2, ""},
		{"destroy", Anchor, nil, []string{"vmm", "slot", "disk attachment", "disk", "dir", "registration", "record"}, 0, ""},
		{"destroy, disk busy", Anchor, []string{"disk"}, []string{"vmm", "slot", "disk attachment", "disk"}, 4, "release disk: disk is busy"},
		{"destroy, vmm will not stop", Anchor, []string{"vmm"}, []string{"vmm"}, 7, "release vmm: vmm is busy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{failing: map[string]bool{}}
			for _, f := range tc.failing {
				r.failing[f] = true
			}
			s := sandboxStack(r)
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // releasing must not care
			err := s.Release(ctx, tc.through)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("Release = %v, want %q", err, tc.err)
			}
			if !reflect.DeepEqual(r.ran, tc.ran) {
				t.Errorf("ran %q, want %q", r.ran, tc.ran)
			}
			if s.Len() != tc.left {
				t.Errorf("%d entries left, want %d", s.Len(), tc.left)
			}
		})
	}
}

// TestReleaseOnce: what succeeded is not run again; a retry finishes what a
// failure left, once the cause is gone.
func TestReleaseOnce(t *testing.T) {
	r := &recorder{failing: map[string]bool{"disk": true}}
	s := sandboxStack(r)
	if err := s.Release(context.Background(), Anchor); err == nil {
		t.Fatal("first destroy succeeded with a busy disk")
	}
	delete(r.failing, "disk")
	r.ran = nil
	if err := s.Release(context.Background(), Anchor); err != nil {
		t.Fatal(err)
	}
	if want := []string{"disk", "dir", "registration", "record"}; !reflect.DeepEqual(r.ran, want) {
		t.Errorf("retry ran %q, want %q", r.ran, want)
	}
	r.ran = nil
	if err := s.Release(context.Background(), Anchor); err != nil || len(r.ran) != 0 {
		t.Errorf("third release ran %q (%v)", r.ran, err)
	}
}

// TestPauseThenResume: a resume registers runtime entries again; the next
// destroy releases them before the storage kept across the pause.
func TestPauseThenResume(t *testing.T) {
	r := &recorder{}
	s := sandboxStack(r)
	if err := s.Release(context.Background(), Runtime); err != nil {
		t.Fatal(err)
	}
	if got := s.Names(Runtime); len(got) != 0 {
		t.Fatalf("runtime entries after pause: %q", got)
	}
	for _, n := range []string{"disk attachment", "slot", "vmm"} {
		s.Push(Runtime, n, r.release(n))
	}
	r.ran = nil
	if err := s.Release(context.Background(), Anchor); err != nil {
		t.Fatal(err)
	}
	want := []string{"vmm", "slot", "disk attachment", "disk", "dir", "registration", "record"}
	if !reflect.DeepEqual(r.ran, want) {
		t.Errorf("ran %q, want %q", r.ran, want)
	}
}
