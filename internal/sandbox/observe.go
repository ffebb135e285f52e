package sandbox

import (
	"context"
	"log/slog"
	"time"

	"github.com/emberhq/ember/internal/event"
	"github.com/emberhq/ember/wire"
)

// Lifecycle operations, as metrics, events and log lines name them.
const (
	// OpCreate boots a sandbox from a template (or restores the template's
	// memory snapshot); OpRestore creates one from a named snapshot or a
	// fork's.
	OpCreate  = "create"
	OpRestore = "restore"
	OpPause   = "pause"
	OpResume  = "resume"
	// OpSnapshot takes a named snapshot. OpFork covers a whole fork (its
	// hidden snapshot and its copies, each of which is also an OpRestore).
	OpSnapshot = "snapshot"
	OpFork     = "fork"
	OpDestroy  = "destroy"
	// OpTemplateBuild is a template build: the default template's at
	// start and every build through the API, which the daemon reports
	// itself (the manager builds nothing).
	OpTemplateBuild = "template_build"
)

// Ops are the operations an Observer hears of.
var Ops = []string{OpCreate, OpRestore, OpPause, OpResume, OpSnapshot, OpFork, OpDestroy, OpTemplateBuild, OpWarm}

// Phases are the steps of each operation, in order; an operation reports
// those it finished (a create boots or restores, and takes the template's
// snapshot only on a template's first cold boot).
var Phases = map[string][]string{
	// A create that claims a warm sandbox has only claim and init.
	OpCreate:   {"setup", "disk", "network", "boot", "restore", "agent", "template_snapshot", "claim", "init"},
	OpRestore:  {"setup", "disk", "network", "restore", "agent", "init"},
	OpPause:    {"save", "release"},
	OpResume:   {"disk", "network", "restore", "agent"},
	OpSnapshot: {"state", "disk"},
	OpFork:     {"snapshot", "copies"},
	OpDestroy:  {"release"},
	OpWarm:     {"setup", "disk", "network", "boot", "restore", "agent", "template_snapshot"},
}

// Not operations a client asks for, but what events and log lines say
// happened: a machine that died while running, an end time reached, a
// daemon restart's recovery.
const (
	opRunning = "run"
	opReap    = "reap"
	opRecover = "recover"
)

// Observer hears of every lifecycle operation as it ends, failed ones too
// (the daemon's metrics implement it).
type Observer interface {
	Observe(Op)
}

// Op is one lifecycle operation, as it ended.
type Op struct {
	// Name is one of the Op* constants.
	Name     string
	Sandbox  string
	Template string
	Duration time.Duration
	// Phases are the steps the operation finished, by name (create:
	// disk, network, boot or restore, agent, init; see docs/ARCHITECTURE.md).
	Phases map[string]time.Duration
	// Err is why it failed; nil when it succeeded.
	Err error
}

// tracker follows one lifecycle operation from its start: it times its
// phases and, at its end, writes its log line (always the keys sandbox,
// template, op, duration_ms and err), tells the Observer and publishes its
// event. A nil *tracker does nothing, for an operation that is part of a
// larger one (a fork's hidden snapshot).
type tracker struct {
	m     *Manager
	op    Op
	start time.Time
	mark  time.Time
	// event is published when the operation succeeds; "" publishes none.
	event wire.Event
	// sandboxFailed: the operation moved the sandbox to the error state,
	// and fail published that.
	sandboxFailed bool
	attrs         []any
}

// track starts following operation name on sandbox id; success publishes
// an event of type typ ("" for none).
func (m *Manager) track(name, typ, id, template string) *tracker {
	now := time.Now()
	return &tracker{m: m, start: now, mark: now,
		op:    Op{Name: name, Sandbox: id, Template: template, Phases: map[string]time.Duration{}},
		event: wire.Event{Type: typ, Sandbox: id, Template: template, Op: name}}
}

// phase ends the current phase under name, starts the next and returns the
// phase's duration in milliseconds (the record's TimingsMS unit).
func (o *tracker) phase(name string) float64 {
	if o == nil {
		return 0
	}
	now := time.Now()
	d := now.Sub(o.mark)
	o.op.Phases[name], o.mark = d, now
	return ms(d)
}

// skip starts the next phase now, leaving the time since the last one
// out of every phase.
func (o *tracker) skip() {
	if o != nil {
		o.mark = time.Now()
	}
}

// with adds attributes to the operation's log line.
func (o *tracker) with(attrs ...any) {
	if o != nil {
		o.attrs = append(o.attrs, attrs...)
	}
}

// fail moves the operation's sandbox to the error state (Manager.fail),
// which publishes the failed event the operation's end then does not.
// Only tracked operations call it (o is not nil).
func (o *tracker) fail(sb *Sandbox, reason string) {
	o.sandboxFailed = true
	o.m.fail(sb, o.op.Name, reason)
}

// end closes the operation with its outcome: err (nil for success) and the
// sandbox's state after it ("" when it is gone).
func (o *tracker) end(err error, state string) {
	if o == nil {
		return
	}
	o.op.Duration, o.op.Err = time.Since(o.start), err
	if o.m.d.Observer != nil {
		o.m.d.Observer.Observe(o.op)
	}
	ev := o.event
	ev.State, ev.DurationMS = state, ms(o.op.Duration)
	msg := "sandbox " + pastTense[o.op.Name]
	level := slog.LevelInfo
	if err != nil {
		ev.Type, ev.Error = wire.EventFailed, err.Error()
		msg, level = o.op.Name+" sandbox", slog.LevelWarn
	}
	phases := make(map[string]float64, len(o.op.Phases))
	for k, v := range o.op.Phases {
		phases[k] = ms(v)
	}
	o.m.logOp(level, msg, o.op.Sandbox, o.op.Template, o.op.Name, o.op.Duration, err,
		append(o.attrs, "state", state, "phases_ms", phases)...)
	if ev.Type != "" && !(err != nil && o.sandboxFailed) {
		o.m.events.Publish(ev)
	}
}

var pastTense = map[string]string{
	OpCreate: "created", OpRestore: "restored", OpPause: "paused", OpResume: "resumed",
	OpSnapshot: "snapshotted", OpFork: "forked", OpDestroy: "destroyed", OpWarm: "warmed",
}

// logOp writes one lifecycle log line, with the keys every one carries.
func (m *Manager) logOp(level slog.Level, msg, id, template, op string, d time.Duration, err error, attrs ...any) {
	errText := ""
	if err != nil {
		errText = err.Error()
	}
	m.log.Log(context.Background(), level, msg, append([]any{"sandbox", id, "template", template, "op", op,
		"duration_ms", ms(d), "err", errText}, attrs...)...)
}

// Events is the hub the manager publishes its lifecycle events to.
func (m *Manager) Events() *event.Hub { return m.events }
