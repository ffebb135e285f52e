package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSandboxRoundTrip(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ember.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(time.Now().UnixMilli()).UTC()
	want := Sandbox{
		ID: "abc", Template: "base", State: "running", VCPUs: 2, MemoryMiB: 512, DiskMiB: 1024,
		Env: map[string]string{"A": "1"}, Metadata: map[string]string{"owner": "me"},
		Token: "tok", SlotIndex: 3, VMMPID: 42, Dir: "/d", DiskPath: "/d/disk", DiskFormat: "qcow2",
		CreatedAt: now, ExpiresAt: now.Add(time.Minute), TimingsMS: map[string]float64{"boot": 1.5},
	}
	if err := s.PutSandbox(ctx, want); err != nil {
		t.Fatal(err)
	}
	// Reopen: state must survive the process.
	s.Close()
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.GetSandbox(ctx, "abc")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != want.ID || got.Env["A"] != "1" || got.Metadata["owner"] != "me" || got.SlotIndex != 3 ||
		got.VMMPID != 42 || !got.CreatedAt.Equal(want.CreatedAt) || !got.ExpiresAt.Equal(want.ExpiresAt) ||
		got.TimingsMS["boot"] != 1.5 || got.DiskFormat != "qcow2" {
		t.Fatalf("round trip: got %+v, want %+v", got, want)
	}

	want.State = "error"
	want.Error = "vmm gone"
	if err := s.PutSandbox(ctx, want); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].State != "error" || list[0].Error != "vmm gone" {
		t.Fatalf("list after update: %+v", list)
	}

	if err := s.DeleteSandbox(ctx, "abc"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetSandbox(ctx, "abc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get deleted: err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteSandbox(ctx, "abc"); err != nil {
		t.Fatalf("delete twice: %v", err)
	}
}

func TestNilMapsStoredEmpty(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "ember.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PutSandbox(ctx, Sandbox{ID: "x", SlotIndex: -1}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetSandbox(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if got.Env == nil || got.Metadata == nil || got.SlotIndex != -1 {
		t.Fatalf("got %+v", got)
	}
}

func TestMigratesVersionOneDatabase(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ember.db")
	// A database as the first release left it: schema v1, one row.
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"sandboxes", "snapshots"} {
		if _, err := s.db.ExecContext(ctx, "DROP TABLE "+table); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.db.ExecContext(ctx, migrations[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, "PRAGMA user_version = 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO sandboxes VALUES ('old','base','running',1,256,1024,'{}','{}','t',0,1,'/d','/d/x','raw',0,0,'','{}')`); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.GetSandbox(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Network.Internet || len(got.Network.Allow) != 0 {
		t.Fatalf("migrated row's policy %+v, want internet on", got.Network)
	}
	got.Network = NetworkPolicy{Internet: false, Allow: []string{"10.0.0.0/8"}}
	if err := s.PutSandbox(ctx, got); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.GetSandbox(ctx, "old"); again.Network.Internet || again.Network.Allow[0] != "10.0.0.0/8" {
		t.Fatalf("policy round trip: %+v", again.Network)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ember.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.db.ExecContext(ctx, "PRAGMA user_version = 999")
	s.Close()
	if _, err := Open(ctx, path); err == nil {
		t.Fatal("opened a database from a newer ember")
	}
}

func TestSnapshotRoundTripAndNewSandboxFields(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ember.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(time.Now().UnixMilli()).UTC()
	sn := Snapshot{Name: "snap", Sandbox: "abc", Template: "base", VCPUs: 2, MemoryMiB: 512, DiskMiB: 1024,
		Dir: "/s/snap", Token: "tok", Env: map[string]string{"A": "1"}, Hidden: true, CreatedAt: now}
	if err := s.PutSnapshot(ctx, sn); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSnapshot(ctx, sn); !errors.Is(err, ErrExists) {
		t.Fatalf("second put: %v, want ErrExists", err)
	}
	sb := Sandbox{ID: "x", State: "paused", TimeoutS: 30, AutoPause: true, Snapshot: "snap", CreatedAt: now, ExpiresAt: now}
	if err := s.PutSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(ctx, path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.GetSnapshot(ctx, "snap")
	if err != nil {
		t.Fatal(err)
	}
	if got.Sandbox != "abc" || got.VCPUs != 2 || got.MemoryMiB != 512 || got.DiskMiB != 1024 || got.Dir != "/s/snap" ||
		got.Token != "tok" || got.Env["A"] != "1" || !got.Hidden || !got.CreatedAt.Equal(now) {
		t.Fatalf("round trip: got %+v, want %+v", got, sn)
	}
	gotSB, err := s.GetSandbox(ctx, "x")
	if err != nil || gotSB.TimeoutS != 30 || !gotSB.AutoPause || gotSB.Snapshot != "snap" {
		t.Fatalf("sandbox fields: %+v %v", gotSB, err)
	}
	if list, err := s.ListSnapshots(ctx); err != nil || len(list) != 1 {
		t.Fatalf("list: %+v %v", list, err)
	}
	if err := s.DeleteSnapshot(ctx, "snap"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSnapshot(ctx, "snap"); err != nil {
		t.Fatalf("delete twice: %v", err)
	}
	if _, err := s.GetSnapshot(ctx, "snap"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// The first daemons created the table without recording a schema version.
func TestMigratesUnversionedDatabase(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ember.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"DROP TABLE sandboxes", "DROP TABLE IF EXISTS snapshots", migrations[0], "PRAGMA user_version = 0",
		`INSERT INTO sandboxes VALUES ('old','base','running',1,256,1024,'{}','{}','t',0,1,'/d','/d/x','raw',0,0,'','{}')`} {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s.Close()
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("open unversioned database: %v", err)
	}
	defer s.Close()
	if got, err := s.GetSandbox(ctx, "old"); err != nil || got.Template != "base" {
		t.Fatalf("row of the unversioned database: %+v %v", got, err)
	}
}

// A path with a URI's query or fragment characters in it names its own
// file: two such databases share nothing.
func TestOpenPathWithURICharacters(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	for _, name := range []string{"a#1", "a#2", "b?x=1", "c%20d"} {
		path := filepath.Join(dir, name, "ember.db")
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		st, err := Open(ctx, path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := st.PutSandbox(ctx, Sandbox{ID: name, State: "running", SlotIndex: -1}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		list, err := st.ListSandboxes(ctx)
		st.Close()
		if err != nil || len(list) != 1 || list[0].ID != name {
			t.Fatalf("%s: %+v %v", name, list, err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("%s: database not at its path: %v", name, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 4 {
		t.Fatalf("files beside the databases: %v", ents)
	}
}
