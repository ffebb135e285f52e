package store

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "write testdata/v<N>.sql: a database as this schema version writes it")

// rawDB opens path without migrating it.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// columns lists a table's columns in order.
func columns(t *testing.T, db *sql.DB, table string) []string {
	t.Helper()
	rows, err := db.Query("SELECT name FROM pragma_table_info(?) ORDER BY cid", table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// An upgraded daemon opens the database any earlier release left: one at
// every schema version, each holding a sandbox in the columns it had.
func TestMigratesEveryEarlierSchema(t *testing.T) {
	base := []any{"old", "base", "paused", 2, 512, 2048, `{"A":"1"}`, `{}`, "tok", -1, 0, "/d/old", "/d/old/disk", "raw", 1000, 2000, "", `{"boot":5}`}
	for v := range len(migrations) {
		t.Run(fmt.Sprintf("version %d", v), func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "ember.db")
			db := rawDB(t, path)
			// Version 0 is the unversioned first schema: its table, no
			// user_version.
			for _, m := range migrations[:max(v, 1)] {
				if _, err := db.Exec(m); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", v)); err != nil {
				t.Fatal(err)
			}
			cols := columns(t, db, "sandboxes")
			marks := strings.TrimSuffix(strings.Repeat("?,", len(base)), ",")
			if _, err := db.Exec("INSERT INTO sandboxes ("+strings.Join(cols[:len(base)], ",")+") VALUES ("+marks+")", base...); err != nil {
				t.Fatal(err)
			}
			db.Close()

			s, err := Open(ctx, path)
			if err != nil {
				t.Fatalf("open a version %d database: %v", v, err)
			}
			defer s.Close()
			got, err := s.GetSandbox(ctx, "old")
			if err != nil {
				t.Fatal(err)
			}
			if got.State != "paused" || got.VCPUs != 2 || got.Env["A"] != "1" || got.TimingsMS["boot"] != 5 || !got.Network.Internet || got.Snapshot != "" {
				t.Fatalf("migrated row: %+v", got)
			}
			// Everything the current schema has works on it.
			got.TimeoutS, got.AutoPause, got.Snapshot = 60, true, "kept"
			got.AutoResume, got.TrafficToken = true, "traffic"
			if err := s.PutSandbox(ctx, got); err != nil {
				t.Fatal(err)
			}
			if back, err := s.GetSandbox(ctx, "old"); err != nil || !back.AutoResume || back.TrafficToken != "traffic" {
				t.Fatalf("read back %+v, %v", back, err)
			}
			if err := s.PutSnapshot(ctx, Snapshot{Name: "kept", Sandbox: "old", Template: "base", CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			var version int
			if err := s.db.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != len(migrations) {
				t.Fatalf("user_version %d (%v), want %d", version, err, len(migrations))
			}
		})
	}
}

// testdata/v<N>.sql are databases as schema version N wrote them, kept as
// SQL. The newest is this release's; once a migration is added it is the
// previous release's, which an upgraded daemon must open.
func TestOpensDatabasesEarlierReleasesWrote(t *testing.T) {
	ctx := context.Background()
	if *update {
		writeFixture(t)
	}
	files, err := filepath.Glob("testdata/v*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/v*.sql (%v): write one with -update", err)
	}
	current := fmt.Sprintf("testdata/v%d.sql", len(migrations))
	if !slices.Contains(files, current) {
		// Without it the next migration would have nothing of this
		// release's to open.
		t.Fatalf("no %s for this release's schema: write it with go test ./internal/store -run TestOpensDatabasesEarlierReleasesWrote -update", current)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			dump, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "ember.db")
			db := rawDB(t, path)
			if _, err := db.Exec(string(dump)); err != nil {
				t.Fatalf("load %s: %v", f, err)
			}
			db.Close()
			if f == current {
				// The newest fixture is what this schema writes.
				fresh := filepath.Join(t.TempDir(), "fresh.db")
				s, err := Open(ctx, fresh)
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
				if a, b := schemaOf(t, path), schemaOf(t, fresh); a != b {
					t.Fatalf("%s holds a schema this release does not write (go test ./internal/store -run TestOpensDatabasesEarlierReleasesWrote -update):\n%s\nwant:\n%s", f, a, b)
				}
			}
			s, err := Open(ctx, path)
			if err != nil {
				t.Fatalf("open %s: %v", f, err)
			}
			defer s.Close()
			running, err := s.GetSandbox(ctx, "running1")
			if err != nil {
				t.Fatal(err)
			}
			if running.State != "running" || running.VMMPID != 4242 || running.SlotIndex != 7 || running.Token != "tok-r" ||
				running.Network.Internet || running.Network.Allow[0] != "10.0.0.0/8" || running.TimeoutS != 300 {
				t.Errorf("running sandbox: %+v", running)
			}
			paused, err := s.GetSandbox(ctx, "paused1")
			if err != nil {
				t.Fatal(err)
			}
			if paused.State != "paused" || paused.VMMPID != 0 || paused.SlotIndex != -1 || !paused.AutoPause || paused.Snapshot != "snap1" {
				t.Errorf("paused sandbox: %+v", paused)
			}
			sn, err := s.GetSnapshot(ctx, "snap1")
			if err != nil || sn.Sandbox != "src1" || !sn.Hidden || sn.Env["K"] != "v" {
				t.Errorf("snapshot: %+v %v", sn, err)
			}
		})
	}
}

// schemaOf returns a database's schema and version, for comparison.
func schemaOf(t *testing.T, path string) string {
	t.Helper()
	db := rawDB(t, path)
	defer db.Close()
	var version int
	if err := db.QueryRow("PRAGMA user_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := fmt.Sprintf("user_version %d\n", version)
	for rows.Next() {
		var s string
		rows.Scan(&s)
		out += s + ";\n"
	}
	return out
}

// writeFixture writes testdata/v<N>.sql for the current version N: a
// database holding a running sandbox, a paused one and a snapshot, as SQL.
func writeFixture(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ember.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, sb := range []Sandbox{
		{ID: "running1", Template: "base", State: "running", VCPUs: 1, MemoryMiB: 256, DiskMiB: 1024, Token: "tok-r",
			SlotIndex: 7, VMMPID: 4242, Dir: "/var/lib/ember/sandboxes/running1", DiskPath: "/var/lib/ember/sandboxes/running1/disk.qcow2",
			DiskFormat: "qcow2", CreatedAt: at, ExpiresAt: at.Add(5 * time.Minute), TimingsMS: map[string]float64{"total": 812.5},
			Network: NetworkPolicy{Allow: []string{"10.0.0.0/8"}}, TimeoutS: 300},
		{ID: "paused1", Template: "base", State: "paused", VCPUs: 2, MemoryMiB: 512, DiskMiB: 2048, Token: "tok-p",
			SlotIndex: -1, Dir: "/var/lib/ember/sandboxes/paused1", DiskPath: "/var/lib/ember/sandboxes/paused1/disk.raw", DiskFormat: "raw",
			CreatedAt: at, ExpiresAt: at.Add(time.Hour), Env: map[string]string{"A": "1"}, Network: NetworkPolicy{Internet: true},
			TimeoutS: 3600, AutoPause: true, Snapshot: "snap1", AutoResume: true, TrafficToken: "traffic-p"},
	} {
		if err := s.PutSandbox(ctx, sb); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutSnapshot(ctx, Snapshot{Name: "snap1", Sandbox: "src1", Template: "base", VCPUs: 2, MemoryMiB: 512, DiskMiB: 2048,
		Dir: "/var/lib/ember/snapshots/snap1", Token: "tok-p", Env: map[string]string{"K": "v"}, Hidden: true, CreatedAt: at}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	db := rawDB(t, path)
	defer db.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "-- An ember database at schema version %d, as that release wrote it.\n", len(migrations))
	fmt.Fprintf(&b, "PRAGMA user_version = %d;\n", len(migrations))
	rows, err := db.Query("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name, sql string
		rows.Scan(&name, &sql)
		tables = append(tables, name)
		b.WriteString(sql + ";\n")
	}
	rows.Close()
	for _, table := range tables {
		cols := columns(t, db, table)
		quoted := make([]string, len(cols))
		for i, c := range cols {
			quoted[i] = "quote(" + c + ")"
		}
		rows, err := db.Query("SELECT " + strings.Join(quoted, " || ',' || ") + " FROM " + table + " ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var vals string
			rows.Scan(&vals)
			fmt.Fprintf(&b, "INSERT INTO %s (%s) VALUES (%s);\n", table, strings.Join(cols, ", "), vals)
		}
		rows.Close()
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fmt.Sprintf("testdata/v%d.sql", len(migrations)), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
