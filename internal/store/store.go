// Package store persists the daemon's state (sandboxes, and later snapshots)
// in an embedded SQLite database, so the daemon's view survives its own
// restart. It stores records; it knows nothing about VMMs or kernels.
package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver (pure Go, no cgo)
)

// ErrNotFound is returned for a record that does not exist.
var ErrNotFound = errors.New("not found")

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
	`CREATE TABLE sandboxes (
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
}

// Open opens (creating if needed) the database at path.
func Open(ctx context.Context, path string) (*Store, error) {
	// WAL keeps readers off the writer's back; busy_timeout rides out the
	// rare overlap between the reaper and a request.
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=synchronous(NORMAL)"
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
	_, err = s.db.ExecContext(ctx, `INSERT OR REPLACE INTO sandboxes
		(id, template, state, vcpus, memory_mib, disk_mib, env, metadata, token, slot_index,
		 vmm_pid, dir, disk_path, disk_format, created_at, expires_at, error, timings, network)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		sb.ID, sb.Template, sb.State, sb.VCPUs, sb.MemoryMiB, sb.DiskMiB, string(env), string(meta),
		sb.Token, sb.SlotIndex, sb.VMMPID, sb.Dir, sb.DiskPath, sb.DiskFormat,
		sb.CreatedAt.UnixMilli(), sb.ExpiresAt.UnixMilli(), sb.Error, string(timings), string(network))
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
		error, timings, network FROM sandboxes `+where+` ORDER BY created_at, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("query sandboxes: %w", err)
	}
	defer rows.Close()
	var out []Sandbox
	for rows.Next() {
		var sb Sandbox
		var env, meta, timings, network string
		var created, expires int64
		if err := rows.Scan(&sb.ID, &sb.Template, &sb.State, &sb.VCPUs, &sb.MemoryMiB, &sb.DiskMiB,
			&env, &meta, &sb.Token, &sb.SlotIndex, &sb.VMMPID, &sb.Dir, &sb.DiskPath, &sb.DiskFormat,
			&created, &expires, &sb.Error, &timings, &network); err != nil {
			return nil, fmt.Errorf("scan sandbox: %w", err)
		}
		if err := decode(sb.ID, env, &sb.Env, meta, &sb.Metadata, timings, &sb.TimingsMS); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(network), &sb.Network); err != nil {
			return nil, fmt.Errorf("decode network policy of sandbox %s: %w", sb.ID, err)
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
