// Package store persists the daemon's state (sandboxes and snapshots)
// in an embedded SQLite database, so the daemon's view survives its own
// restart. It stores records; it knows nothing about VMMs or kernels.
package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/resource"

	_ "modernc.org/sqlite" // registers the "sqlite" driver (pure Go, no cgo)
)

// ErrNotFound is returned for a record that does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when inserting a record whose key is taken.
var ErrExists = errors.New("already exists")

// Sandbox is one sandbox's persisted record.
type Sandbox struct {
	ID        string
	Template  string
	State     string
	VCPUs     int
	MemoryMiB int
	DiskMiB   int
	Env       map[string]string
	Metadata  map[string]string
	// Token is the guest agent's access token.
	Token string
	// SlotIndex is the network slot (-1: none held).
	SlotIndex int
	// VMMPID is the VMM process (0: none).
	VMMPID int
	// Dir is the sandbox's private directory.
	Dir        string
	DiskPath   string
	DiskFormat string
	CreatedAt  time.Time
	ExpiresAt  time.Time
	// Error says why a sandbox is in the error state.
	Error string
	// TimingsMS holds the duration of each lifecycle phase of its creation.
	TimingsMS map[string]float64
	// Network is the sandbox's egress policy.
	Network NetworkPolicy
	// TimeoutS is the sandbox's lifetime in seconds, from create or the
	// last timeout change; a resume starts it again.
	TimeoutS int
	// AutoPause pauses the sandbox at its end time instead of destroying it.
	AutoPause bool
	// Snapshot names the snapshot the sandbox was created from ("" for a
	// template); the snapshot cannot be deleted while the sandbox exists.
	Snapshot string
	// AutoResume resumes the paused sandbox when traffic for it reaches the
	// port proxy.
	AutoResume bool
	// TrafficToken, when set, is what the port proxy requires of requests
	// to the sandbox's ports (the agent's own port excepted, which checks
	// Token itself).
	TrafficToken string

	// Limits bound the sandbox's cgroup while its machine runs.
	Limits resource.Limits

	// DiskBytes and MemoryBytes are the bytes the sandbox's disk and saved
	// memory occupy (allocated blocks), Usage what its running machine
	// uses (its cgroup's figures). They are measured when read, never
	// stored.
	DiskBytes   int64
	MemoryBytes int64
	Usage       *resource.Usage
}

// Snapshot is a named, persistent capture of a sandbox: its memory and
// device state and its flattened disk.
type Snapshot struct {
	Name string
	// Sandbox is the id of the sandbox it was taken from.
	Sandbox   string
	Template  string
	VCPUs     int
	MemoryMiB int
	DiskMiB   int
	// Dir holds the snapshot's files.
	Dir string
	// Token is the guest agent's access token at the snapshot: the agents
	// of sandboxes restored from it start out requiring it.
	Token string
	// Env is the source's default environment.
	Env map[string]string
	// Hidden snapshots (a fork's) are not listed and go away with the last
	// sandbox created from them.
	Hidden    bool
	CreatedAt time.Time

	// DiskBytes and MemoryBytes are the bytes the flattened disk and the
	// saved machine state occupy (allocated blocks), measured when read.
	DiskBytes   int64
	MemoryBytes int64
}

// NetworkPolicy is a sandbox's egress policy as stored: prefixes in CIDR
// notation.
type NetworkPolicy struct {
	Internet bool     `json:"internet"`
	Allow    []string `json:"allow,omitempty"`
	Deny     []string `json:"deny,omitempty"`
}

// Store is an open database.
type Store struct {
	db *sql.DB
}

// migrations bring a database from version i (PRAGMA user_version) to i+1.
// Append only: a released migration never changes.
var migrations = []string{
	// IF NOT EXISTS: databases made before the store was versioned hold
	// this table at user_version 0.
	`CREATE TABLE IF NOT EXISTS sandboxes (
	id          TEXT PRIMARY KEY,
	template    TEXT NOT NULL,
	state       TEXT NOT NULL,
	vcpus       INTEGER NOT NULL,
	memory_mib  INTEGER NOT NULL,
	disk_mib    INTEGER NOT NULL,
	env         TEXT NOT NULL,
	metadata    TEXT NOT NULL,
	token       TEXT NOT NULL,
	slot_index  INTEGER NOT NULL,
	vmm_pid     INTEGER NOT NULL,
	dir         TEXT NOT NULL,
	disk_path   TEXT NOT NULL,
	disk_format TEXT NOT NULL,
	created_at  INTEGER NOT NULL,
	expires_at  INTEGER NOT NULL,
	error       TEXT NOT NULL,
	timings     TEXT NOT NULL
)`,
	`ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT '{"internet":true}'`,
	`ALTER TABLE sandboxes ADD COLUMN timeout_s INTEGER NOT NULL DEFAULT 0`,
	`ALTER TABLE sandboxes ADD COLUMN auto_pause INTEGER NOT NULL DEFAULT 0`,
	`ALTER TABLE sandboxes ADD COLUMN snapshot TEXT NOT NULL DEFAULT ''`,
	`CREATE TABLE snapshots (
	name        TEXT PRIMARY KEY,
	sandbox     TEXT NOT NULL,
	template    TEXT NOT NULL,
	vcpus       INTEGER NOT NULL,
	memory_mib  INTEGER NOT NULL,
	disk_mib    INTEGER NOT NULL,
	dir         TEXT NOT NULL,
	token       TEXT NOT NULL,
	env         TEXT NOT NULL,
	hidden      INTEGER NOT NULL,
	created_at  INTEGER NOT NULL
)`,
	`ALTER TABLE sandboxes ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE sandboxes ADD COLUMN traffic_token TEXT NOT NULL DEFAULT ''`,
	// Hardening: the bounds of a sandbox's cgroup.
	`ALTER TABLE sandboxes ADD COLUMN limits TEXT NOT NULL DEFAULT '{}'`,
}

// uriPath escapes what a file: URI would read as its query or fragment, so
// a path with '?' or '#' in it (Go's fuzz seeds make such directories) is
// the file it names, not a prefix of it that other databases share.
var uriPath = strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")

// Open opens (creating if needed) the database at path.
func Open(ctx context.Context, path string) (*Store, error) {
	// WAL keeps readers off the writer's back; busy_timeout rides out the
	// rare overlap between the reaper and a request. The WAL is
	// checkpointed every 256 pages and cut back to 1 MiB after: left to
	// SQLite's defaults it grew by ~48 KiB with every sandbox made and
	// destroyed, to 4 MiB and more.
	dsn := "file:" + uriPath.Replace(path) + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=synchronous(NORMAL)" +
		"&_pragma=wal_autocheckpoint(256)&_pragma=journal_size_limit(1048576)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	// One connection: SQLite serialises writers anyway, and this keeps
	// "database is locked" out of the picture.
	db.SetMaxOpenConns(1)
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// migrate applies the migrations the database has not seen, each in its own
// transaction with the version bump, so a crash never leaves one half done.
func migrate(ctx context.Context, db *sql.DB) error {
	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this ember (%d): refusing to touch it", version, len(migrations))
	}
	for v := version; v < len(migrations); v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: set version: %w", v+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: commit: %w", v+1, err)
		}
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// PutSandbox inserts or replaces a sandbox record.
func (s *Store) PutSandbox(ctx context.Context, sb Sandbox) error {
	env, err := json.Marshal(nonNil(sb.Env))
	if err != nil {
		return fmt.Errorf("encode env of sandbox %s: %w", sb.ID, err)
	}
	meta, err := json.Marshal(nonNil(sb.Metadata))
	if err != nil {
		return fmt.Errorf("encode metadata of sandbox %s: %w", sb.ID, err)
	}
	timings, err := json.Marshal(sb.TimingsMS)
	if err != nil {
		return fmt.Errorf("encode timings of sandbox %s: %w", sb.ID, err)
	}
	network, err := json.Marshal(sb.Network)
	if err != nil {
		return fmt.Errorf("encode network policy of sandbox %s: %w", sb.ID, err)
	}
	limits, err := json.Marshal(sb.Limits)
	if err != nil {
		return fmt.Errorf("encode limits of sandbox %s: %w", sb.ID, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT OR REPLACE INTO sandboxes
		(id, template, state, vcpus, memory_mib, disk_mib, env, metadata, token, slot_index,
		 vmm_pid, dir, disk_path, disk_format, created_at, expires_at, error, timings, network,
		 timeout_s, auto_pause, snapshot, auto_resume, traffic_token, limits)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		sb.ID, sb.Template, sb.State, sb.VCPUs, sb.MemoryMiB, sb.DiskMiB, string(env), string(meta),
		sb.Token, sb.SlotIndex, sb.VMMPID, sb.Dir, sb.DiskPath, sb.DiskFormat,
		sb.CreatedAt.UnixMilli(), sb.ExpiresAt.UnixMilli(), sb.Error, string(timings), string(network),
		sb.TimeoutS, sb.AutoPause, sb.Snapshot, sb.AutoResume, sb.TrafficToken, string(limits))
	if err != nil {
		return fmt.Errorf("put sandbox %s: %w", sb.ID, err)
	}
	return nil
}

// GetSandbox returns one sandbox record or ErrNotFound.
func (s *Store) GetSandbox(ctx context.Context, id string) (Sandbox, error) {
	rows, err := s.query(ctx, "WHERE id = ?", id)
	if err != nil {
		return Sandbox{}, err
	}
	if len(rows) == 0 {
		return Sandbox{}, fmt.Errorf("sandbox %s: %w", id, ErrNotFound)
	}
	return rows[0], nil
}

// ListSandboxes returns every sandbox record, oldest first.
func (s *Store) ListSandboxes(ctx context.Context) ([]Sandbox, error) {
	return s.query(ctx, "")
}

// DeleteSandbox removes a sandbox record; deleting a missing one is not an error.
func (s *Store) DeleteSandbox(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, "DELETE FROM sandboxes WHERE id = ?", id); err != nil {
		return fmt.Errorf("delete sandbox %s: %w", id, err)
	}
	return nil
}

func (s *Store) query(ctx context.Context, where string, args ...any) ([]Sandbox, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, template, state, vcpus, memory_mib, disk_mib, env,
		metadata, token, slot_index, vmm_pid, dir, disk_path, disk_format, created_at, expires_at,
		error, timings, network, timeout_s, auto_pause, snapshot, auto_resume, traffic_token, limits FROM sandboxes `+where+` ORDER BY created_at, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("query sandboxes: %w", err)
	}
	defer rows.Close()
	var out []Sandbox
	for rows.Next() {
		var sb Sandbox
		var env, meta, timings, network, limits string
		var created, expires int64
		if err := rows.Scan(&sb.ID, &sb.Template, &sb.State, &sb.VCPUs, &sb.MemoryMiB, &sb.DiskMiB,
			&env, &meta, &sb.Token, &sb.SlotIndex, &sb.VMMPID, &sb.Dir, &sb.DiskPath, &sb.DiskFormat,
			&created, &expires, &sb.Error, &timings, &network, &sb.TimeoutS, &sb.AutoPause, &sb.Snapshot,
			&sb.AutoResume, &sb.TrafficToken, &limits); err != nil {
			return nil, fmt.Errorf("scan sandbox: %w", err)
		}
		if err := decode(sb.ID, env, &sb.Env, meta, &sb.Metadata, timings, &sb.TimingsMS); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(network), &sb.Network); err != nil {
			return nil, fmt.Errorf("decode network policy of sandbox %s: %w", sb.ID, err)
		}
		if err := json.Unmarshal([]byte(limits), &sb.Limits); err != nil {
			return nil, fmt.Errorf("decode limits of sandbox %s: %w", sb.ID, err)
		}
		sb.CreatedAt = time.UnixMilli(created).UTC()
		sb.ExpiresAt = time.UnixMilli(expires).UTC()
		out = append(out, sb)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read sandboxes: %w", err)
	}
	return out, nil
}

// PutSnapshot inserts a snapshot record; a name already taken is ErrExists.
func (s *Store) PutSnapshot(ctx context.Context, sn Snapshot) error {
	env, err := json.Marshal(nonNil(sn.Env))
	if err != nil {
		return fmt.Errorf("encode env of snapshot %s: %w", sn.Name, err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT OR IGNORE INTO snapshots
		(name, sandbox, template, vcpus, memory_mib, disk_mib, dir, token, env, hidden, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		sn.Name, sn.Sandbox, sn.Template, sn.VCPUs, sn.MemoryMiB, sn.DiskMiB, sn.Dir, sn.Token,
		string(env), sn.Hidden, sn.CreatedAt.UnixMilli())
	if err != nil {
		return fmt.Errorf("put snapshot %s: %w", sn.Name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("put snapshot %s: %w", sn.Name, err)
	} else if n == 0 {
		return fmt.Errorf("snapshot %s: %w", sn.Name, ErrExists)
	}
	return nil
}

// GetSnapshot returns one snapshot record or ErrNotFound.
func (s *Store) GetSnapshot(ctx context.Context, name string) (Snapshot, error) {
	rows, err := s.querySnapshots(ctx, "WHERE name = ?", name)
	if err != nil {
		return Snapshot{}, err
	}
	if len(rows) == 0 {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", name, ErrNotFound)
	}
	return rows[0], nil
}

// ListSnapshots returns every snapshot record, hidden ones included, oldest
// first.
func (s *Store) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	return s.querySnapshots(ctx, "")
}

// DeleteSnapshot removes a snapshot record; deleting a missing one is not an
// error.
func (s *Store) DeleteSnapshot(ctx context.Context, name string) error {
	if _, err := s.db.ExecContext(ctx, "DELETE FROM snapshots WHERE name = ?", name); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", name, err)
	}
	return nil
}

func (s *Store) querySnapshots(ctx context.Context, where string, args ...any) ([]Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, sandbox, template, vcpus, memory_mib, disk_mib, dir,
		token, env, hidden, created_at FROM snapshots `+where+` ORDER BY created_at, name`, args...)
	if err != nil {
		return nil, fmt.Errorf("query snapshots: %w", err)
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		var sn Snapshot
		var env string
		var created int64
		if err := rows.Scan(&sn.Name, &sn.Sandbox, &sn.Template, &sn.VCPUs, &sn.MemoryMiB, &sn.DiskMiB,
			&sn.Dir, &sn.Token, &env, &sn.Hidden, &created); err != nil {
			return nil, fmt.Errorf("scan snapshot: %w", err)
		}
		if err := json.Unmarshal([]byte(env), &sn.Env); err != nil {
			return nil, fmt.Errorf("decode env of snapshot %s: %w", sn.Name, err)
		}
		sn.CreatedAt = time.UnixMilli(created).UTC()
		out = append(out, sn)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read snapshots: %w", err)
	}
	return out, nil
}

func decode(id, env string, envOut *map[string]string, meta string, metaOut *map[string]string, timings string, timingsOut *map[string]float64) error {
	if err := json.Unmarshal([]byte(env), envOut); err != nil {
		return fmt.Errorf("decode env of sandbox %s: %w", id, err)
	}
	if err := json.Unmarshal([]byte(meta), metaOut); err != nil {
		return fmt.Errorf("decode metadata of sandbox %s: %w", id, err)
	}
	if err := json.Unmarshal([]byte(timings), timingsOut); err != nil {
		return fmt.Errorf("decode timings of sandbox %s: %w", id, err)
	}
	return nil
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
