package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/emberhq/ember/internal/template"
)

// ErrTemplateInUse: a sandbox or a snapshot still needs the template (or
// it is the daemon's default).
var ErrTemplateInUse = errors.New("template in use")

// TemplateRemover deletes templates (template.Registry).
type TemplateRemover interface {
	Remove(name string) error
}

// useTemplate holds a reference on a template for a create, so a delete
// waits for the create's record (which names it) or its end.
func (m *Manager) useTemplate(name string) (func(), error) {
	m.tplMu.Lock()
	defer m.tplMu.Unlock()
	if m.tplBusy[name] {
		return nil, fmt.Errorf("template %q: being deleted: %w", name, ErrTemplateNotFound)
	}
	if m.tplRefs == nil {
		m.tplRefs = map[string]int{}
	}
	m.tplRefs[name]++
	return func() {
		m.tplMu.Lock()
		if m.tplRefs[name]--; m.tplRefs[name] <= 0 {
			delete(m.tplRefs, name)
		}
		m.tplMu.Unlock()
	}, nil
}

// DeleteTemplate deletes a template nothing needs: refused with
// ErrTemplateInUse while a sandbox (or a create in flight) or a snapshot
// was made from it, or when it is the daemon's default. Its template
// snapshots go with it.
func (m *Manager) DeleteTemplate(ctx context.Context, name string, reg TemplateRemover) error {
	if _, err := m.d.Templates.Get(name); errors.Is(err, template.ErrNotFound) {
		return fmt.Errorf("template %q: %w", name, ErrTemplateNotFound)
	} else if err != nil {
		return err
	}
	return m.ReplaceTemplate(ctx, name, func() error {
		if err := reg.Remove(name); err != nil {
			if errors.Is(err, template.ErrNotFound) {
				return fmt.Errorf("template %q: %w", name, ErrTemplateNotFound)
			}
			return err
		}
		m.log.Info("template deleted", "template", name)
		return nil
	})
}

// ReplaceTemplate runs replace (a build publishing the template called
// name) once nothing needs the template it replaces, holding creates from
// it off meanwhile: a sandbox's disk may sit on its image. It is
// ErrTemplateInUse while a sandbox, a create or a snapshot needs it, or
// when it is the daemon's default. replace nil just checks.
func (m *Manager) ReplaceTemplate(ctx context.Context, name string, replace func() error) error {
	if name == m.cfg.DefaultTemplate {
		return fmt.Errorf("template %q: the daemon's default template (it builds it itself): %w", name, ErrTemplateInUse)
	}
	users, err := m.claimTemplate(ctx, name)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("template %q: needed by %s: %w", name, strings.Join(users, ", "), ErrTemplateInUse)
	}
	defer m.unclaimTemplate(name)
	if replace == nil {
		return nil
	}
	if err := replace(); err != nil {
		return err
	}
	return m.dropTemplateSnapshots(name)
}

func (m *Manager) unclaimTemplate(name string) {
	m.tplMu.Lock()
	delete(m.tplBusy, name)
	m.tplMu.Unlock()
}

// dropTemplateSnapshots removes a template's memory snapshots (every
// build and machine shape).
func (m *Manager) dropTemplateSnapshots(name string) error {
	var errs []error
	entries, _ := os.ReadDir(m.cfg.SnapshotDir)
	own := regexp.MustCompile(`^` + regexp.QuoteMeta(templatePrefix+name) + `-[0-9a-f]{1,16}-[0-9]+c[0-9]+m$`)
	for _, e := range entries {
		if own.MatchString(e.Name()) {
			errs = append(errs, os.RemoveAll(filepath.Join(m.cfg.SnapshotDir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// claimTemplate lists what needs a template; when nothing does, it marks
// the template busy (no create takes it while its files go).
func (m *Manager) claimTemplate(ctx context.Context, name string) ([]string, error) {
	snaps, err := m.d.Store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	m.tplMu.Lock()
	defer m.tplMu.Unlock()
	var users []string
	if m.tplBusy[name] {
		return []string{"(a delete in progress)"}, nil
	}
	if m.tplRefs[name] > 0 {
		users = append(users, "(a create in progress)")
	}
	for _, r := range m.records() {
		if r.Template == name {
			users = append(users, "sandbox "+r.ID)
		}
	}
	for _, sn := range snaps {
		if sn.Template == name {
			what := "snapshot " + sn.Name
			if sn.Hidden {
				what = "a fork's snapshot"
			}
			users = append(users, what)
		}
	}
	if len(users) == 0 {
		if m.tplBusy == nil {
			m.tplBusy = map[string]bool{}
		}
		m.tplBusy[name] = true
	}
	return users, nil
}
