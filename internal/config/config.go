// Package config reads the daemon's configuration. Every `ember serve`
// setting has one key, the same in the file (TOML, /etc/ember/ember.toml by
// default) and as a flag, so an operator moves a flag into the file by
// copying it. Values are layered: defaults, then the file, then the
// environment (for the few settings that read one), then the flags set on
// the command line; each effective value remembers where it came from, for
// `ember serve --print-config` and for errors that point at the line to fix.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"github.com/spf13/pflag"
)

// DefaultPath is the file read when no --config names one; a missing
// default file means "all defaults", a missing named file is an error.
const DefaultPath = "/etc/ember/ember.toml"

// Defaults both the daemon and the CLI use.
const (
	DefaultListen   = "127.0.0.1:7070"
	DefaultDataDir  = "/var/lib/ember"
	DefaultCacheDir = "/var/cache/ember"
)

// The defaults of the packages the settings configure, spelt out here so
// that the CLI, which reads DefaultListen and DefaultDataDir on any system,
// does not import kernel-facing packages (a test holds them equal).
const (
	defaultTemplate   = "base"          // template.DefaultName
	defaultPoolSize   = 8               // network.DefaultPoolSize
	modeNetns         = "netns"         // network.ModeNetns
	modeBridge        = "bridge"        // network.ModeBridge
	defaultBridge     = "ember-br0"     // network.DefaultBridge
	defaultBridgeCIDR = "172.30.0.0/24" // network.DefaultBridgeCIDR
	defaultExecOutput = 16 << 20        // api.DefaultExecOutputLimit

	defaultOverheadMiB    = 192         // sandbox.DefaultOverheadMiB
	defaultVCPUOvercommit = 4.0         // sandbox.DefaultVCPUOvercommit
	defaultCreateQueue    = 64          // sandbox.DefaultMaxQueue
	defaultQueueWait      = "20s"       // sandbox.DefaultQueueWait
	defaultVMMUser        = "ember-vmm" // the user `make deps` creates
)

// Serve is every setting of `ember serve`. The toml tag is the key in the
// file and the flag's name; the settings table below gives each its help
// text (the flag's usage and the example file's comment).
type Serve struct {
	Listen          string `toml:"listen"`
	DataDir         string `toml:"data-dir"`
	CacheDir        string `toml:"cache-dir"`
	TemplateDir     string `toml:"template-dir"`
	DefaultTemplate string `toml:"default-template"`
	VMM             string `toml:"vmm"`
	Firecracker     string `toml:"firecracker"`
	Accel           string `toml:"accel"`
	Rootfs          string `toml:"rootfs"`
	SlotFirst       int    `toml:"slot-first"`
	SlotCount       int    `toml:"slot-count"`
	SlotPool        int    `toml:"slot-pool"`
	NetworkMode     string `toml:"network-mode"`
	Bridge          string `toml:"bridge"`
	BridgeCIDR      string `toml:"bridge-cidr"`
	Uplink          string `toml:"uplink"`
	NoEgress        bool   `toml:"no-egress"`
	Domain          string `toml:"domain"`
	ExecOutputLimit int    `toml:"exec-output-limit"`
	LogLevel        string `toml:"log-level"`
	LogFormat       string `toml:"log-format"`
	MetricsListen   string `toml:"metrics-listen"`
	MetricsInterval string `toml:"metrics-interval"`
	PrintAPIKey     bool   `toml:"print-api-key"`
	// Warm is the warm pools: TEMPLATE=COUNT, comma-separated (see
	// WarmPools).
	Warm string `toml:"warm"`
	// Template builds (package build).
	BuildCacheGiB int `toml:"build-cache-gib"`
	// E2B facade and TLS (see the settings table).
	E2BTemplates string `toml:"e2b-templates"`
	TLSListen    string `toml:"tls-listen"`
	TLSCert      string `toml:"tls-cert"`
	TLSKey       string `toml:"tls-key"`

	// Hardening: admission control, the sandboxes' cgroups, the VMMs'
	// confinement (see the settings table).
	CapacityMemoryMiB  int     `toml:"capacity-memory-mib"`
	VMMOverheadMiB     int     `toml:"vmm-overhead-mib"`
	VCPUOvercommit     float64 `toml:"vcpu-overcommit"`
	CapacityShmMiB     int     `toml:"capacity-shm-mib"`
	MaxParallelCreates int     `toml:"max-parallel-creates"`
	CreateQueue        int     `toml:"create-queue"`
	CreateQueueWait    string  `toml:"create-queue-wait"`
	Cgroups            bool    `toml:"cgroups"`
	CgroupParent       string  `toml:"cgroup-parent"`
	CPUPerVCPU         float64 `toml:"cpu-per-vcpu"`
	PidsLimit          int     `toml:"pids-limit"`
	IOWeight           int     `toml:"io-weight"`
	VMMUser            string  `toml:"vmm-user"`
	VMMSeccomp         bool    `toml:"vmm-seccomp"`
	VMMChroot          bool    `toml:"vmm-chroot"`
	Jailer             string  `toml:"jailer"`
	JailerChrootBase   string  `toml:"jailer-chroot-base"`
	JailerCPUMax       string  `toml:"jailer-cpu-max"`
	JailerMemoryMax    string  `toml:"jailer-memory-max"`
}

// Default returns the configuration of a daemon given no file and no flags.
func Default() Serve {
	return Serve{
		Listen:          DefaultListen,
		DataDir:         DefaultDataDir,
		CacheDir:        DefaultCacheDir,
		DefaultTemplate: defaultTemplate,
		SlotPool:        defaultPoolSize,
		NetworkMode:     modeNetns,
		Bridge:          defaultBridge,
		BridgeCIDR:      defaultBridgeCIDR,
		Domain:          "localhost",
		ExecOutputLimit: defaultExecOutput,
		LogLevel:        "info",
		LogFormat:       "text",
		MetricsInterval: "5s",
		BuildCacheGiB:   32,

		VMMOverheadMiB:     defaultOverheadMiB,
		VCPUOvercommit:     defaultVCPUOvercommit,
		MaxParallelCreates: runtime.NumCPU(),
		CreateQueue:        defaultCreateQueue,
		CreateQueueWait:    defaultQueueWait,
		Cgroups:            true,
		CPUPerVCPU:         1,
		PidsLimit:          512,
		IOWeight:           100,
		VMMUser:            defaultVMMUser,
		VMMSeccomp:         true,
		VMMChroot:          true,
		JailerChrootBase:   "/srv/jailer",
	}
}

// QueueWait is CreateQueueWait as a duration (validated by Load).
func (s Serve) QueueWait() time.Duration {
	d, _ := time.ParseDuration(s.CreateQueueWait)
	return d
}

// MetricsEvery is MetricsInterval as a duration (validated by Load).
func (s Serve) MetricsEvery() time.Duration {
	d, _ := time.ParseDuration(s.MetricsInterval)
	return d
}

// Templates returns the template registry directory: TemplateDir, or
// DATA_DIR/templates when it is empty.
func (s Serve) Templates() string {
	if s.TemplateDir != "" {
		return s.TemplateDir
	}
	return filepath.Join(s.DataDir, "templates")
}

// LockFile is the data directory's single-instance lock: two daemons on
// one data directory would fight over its sandboxes and network slots.
func (s Serve) LockFile() string { return filepath.Join(s.DataDir, "ember.lock") }

// setting describes one key: its help text, the environment variable that
// overrides the file (if any), the values it may take (if a fixed set) and
// where it lives in Serve.
type setting struct {
	key   string
	usage string
	env   string
	oneOf []string
	// nonNegative rejects a negative integer.
	nonNegative bool
	field       func(*Serve) any
}

// settings lists every key in the order --print-config and the example
// file show them.
var settings = []setting{
	{key: "listen", usage: "address the API listens on", field: func(s *Serve) any { return &s.Listen }},
	{key: "data-dir", usage: "directory for the database, API key, templates and sandboxes", field: func(s *Serve) any { return &s.DataDir }},
	{key: "cache-dir", usage: "directory for build caches (the guest kernel) and accelerator verdicts", env: "EMBER_CACHE_DIR",
		field: func(s *Serve) any { return &s.CacheDir }},
	{key: "template-dir", usage: "template registry directory (default DATA_DIR/templates)", field: func(s *Serve) any { return &s.TemplateDir }},
	{key: "default-template", usage: "template a create that names none gets (its kernel also decides the VMM)",
		field: func(s *Serve) any { return &s.DefaultTemplate }},
	{key: "vmm", usage: `"firecracker", "qemu" or "" (firecracker where its binary exists and KVM boots the default kernel)`,
		oneOf: []string{"", "firecracker", "qemu"}, field: func(s *Serve) any { return &s.VMM }},
	{key: "firecracker", usage: "firecracker binary (default: firecracker on PATH)", field: func(s *Serve) any { return &s.Firecracker }},
	{key: "accel", usage: `QEMU accelerator: "kvm", "tcg" or "" (per kernel: kvm where a probe boot shows KVM runs it)`,
		oneOf: []string{"", "kvm", "tcg"}, field: func(s *Serve) any { return &s.Accel }},
	{key: "rootfs", usage: `root disk backend: "devmapper", "reflink", "qcow2", "copy" or "" (automatic)`,
		oneOf: []string{"", "auto", "devmapper", "reflink", "qcow2", "copy"}, field: func(s *Serve) any { return &s.Rootfs }},
	{key: "slot-first", usage: "first network slot index this daemon uses", nonNegative: true, field: func(s *Serve) any { return &s.SlotFirst }},
	{key: "slot-count", usage: "how many slot indexes from slot-first this daemon uses and reclaims (0: all above)", nonNegative: true,
		field: func(s *Serve) any { return &s.SlotCount }},
	{key: "slot-pool", usage: "network slots kept built ahead of demand", nonNegative: true, field: func(s *Serve) any { return &s.SlotPool }},
	{key: "network-mode", usage: `"netns" (a namespace per sandbox) or "bridge" (one shared bridge)`,
		oneOf: []string{modeNetns, modeBridge}, field: func(s *Serve) any { return &s.NetworkMode }},
	{key: "bridge", usage: "bridge interface of the bridge network mode", field: func(s *Serve) any { return &s.Bridge }},
	{key: "bridge-cidr", usage: "subnet of the bridge network mode (gateway first, guests after)", field: func(s *Serve) any { return &s.BridgeCIDR }},
	{key: "uplink", usage: "interface sandbox egress leaves by (default: the default route's)", field: func(s *Serve) any { return &s.Uplink }},
	{key: "no-egress", usage: "give sandboxes no route out (leaves host forwarding and NAT alone)", field: func(s *Serve) any { return &s.NoEgress }},
	{key: "domain", usage: "requests for <port>-<sandbox-id>.DOMAIN are proxied to that port in the sandbox", field: func(s *Serve) any { return &s.Domain }},
	{key: "exec-output-limit", usage: "bytes of stdout, and of stderr, POST /exec keeps (the rest is dropped and the result says truncated)",
		nonNegative: true, field: func(s *Serve) any { return &s.ExecOutputLimit }},
	{key: "log-level", usage: "debug, info, warn or error", field: func(s *Serve) any { return &s.LogLevel }},
	{key: "log-format", usage: `"text" (key=value lines) or "json" (one object a line, for log shippers)`,
		oneOf: []string{"text", "json"}, field: func(s *Serve) any { return &s.LogFormat }},
	{key: "metrics-listen", usage: "also serve Prometheus metrics on this address, without the API key (the API's /metrics needs it)",
		field: func(s *Serve) any { return &s.MetricsListen }},
	{key: "metrics-interval", usage: "how often each running sandbox's CPU, memory and disk use is sampled (a duration: 5s)",
		field: func(s *Serve) any { return &s.MetricsInterval }},
	{key: "print-api-key", usage: "print the API key at start (make run does)", field: func(s *Serve) any { return &s.PrintAPIKey }},
	{key: "warm", usage: "sandboxes kept restored ahead of demand, per template: TEMPLATE=COUNT, comma-separated (base=4)",
		field: func(s *Serve) any { return &s.Warm }},
	{key: "build-cache-gib", usage: "GiB of disk the template build step cache may allocate (least recently used steps go first; published templates' steps stay)",
		nonNegative: true, field: func(s *Serve) any { return &s.BuildCacheGiB }},
	{key: "e2b-templates", usage: `E2B template names and the ember templates they stand for, "NAME=TEMPLATE,…" (E2B's default "base" is the default template unless named here)`,
		field: func(s *Serve) any { return &s.E2BTemplates }},
	{key: "tls-listen", usage: "serve the API and the port proxy over TLS on this address as well as in the clear on listen (the 1.x and early 2.x E2B SDKs reach a daemon only over https)",
		field: func(s *Serve) any { return &s.TLSListen }},
	{key: "tls-cert", usage: "TLS certificate (PEM), covering api.DOMAIN and *.DOMAIN for the E2B SDKs: the API on listen is served over TLS with it, unless tls-listen names an address of its own",
		field: func(s *Serve) any { return &s.TLSCert }},
	{key: "tls-key", usage: "private key (PEM) of tls-cert", field: func(s *Serve) any { return &s.TLSKey }},

	// Hardening: admission control.
	{key: "capacity-memory-mib", usage: "memory running machines may commit, guest RAM plus vmm-overhead-mib each (0: 90% of the host's)",
		nonNegative: true, field: func(s *Serve) any { return &s.CapacityMemoryMiB }},
	{key: "vmm-overhead-mib", usage: "memory one VMM takes beyond its guest's RAM, counted against the capacity and its cgroup limit",
		nonNegative: true, field: func(s *Serve) any { return &s.VMMOverheadMiB }},
	{key: "vcpu-overcommit", usage: "vCPUs that may run per host CPU", field: func(s *Serve) any { return &s.VCPUOvercommit }},
	{key: "capacity-shm-mib", usage: "room for guest RAM files in the VMM's memory directory (0: 90% of its file system)",
		nonNegative: true, field: func(s *Serve) any { return &s.CapacityShmMiB }},
	{key: "max-parallel-creates", usage: "creates and resumes that run at once; more wait in a queue (default: the host's CPUs)",
		field: func(s *Serve) any { return &s.MaxParallelCreates }},
	{key: "create-queue", usage: "creates and resumes that may wait for a turn; more are refused with 429", nonNegative: true,
		field: func(s *Serve) any { return &s.CreateQueue }},
	{key: "create-queue-wait", usage: "longest a create waits for a turn before it is refused with 429 (a duration: 20s)",
		field: func(s *Serve) any { return &s.CreateQueueWait }},
	// Hardening: every running sandbox's cgroup.
	{key: "cgroups", usage: "give every running sandbox a cgroup bounding its VMM and helpers", field: func(s *Serve) any { return &s.Cgroups }},
	{key: "cgroup-parent", usage: "parent of the sandboxes' cgroups (default ember/<hash of data-dir>)", field: func(s *Serve) any { return &s.CgroupParent }},
	{key: "cpu-per-vcpu", usage: "CPU time a sandbox may use per vCPU, in CPUs (its cgroup's quota)", field: func(s *Serve) any { return &s.CPUPerVCPU }},
	{key: "pids-limit", usage: "processes and threads a sandbox's VMM and helpers may have", field: func(s *Serve) any { return &s.PidsLimit }},
	{key: "io-weight", usage: "block I/O weight of a sandbox, 10 to 1000, where the host's I/O scheduler has weights",
		field: func(s *Serve) any { return &s.IOWeight }},
	// Hardening: the VMMs' confinement.
	{key: "vmm-user", usage: `unprivileged user the VMMs run as ("root" runs QEMU as the daemon's user)`, field: func(s *Serve) any { return &s.VMMUser }},
	{key: "vmm-seccomp", usage: "turn on QEMU's seccomp filter with obsolete calls, privilege changes, spawning and resource control denied",
		field: func(s *Serve) any { return &s.VMMSeccomp }},
	{key: "vmm-chroot", usage: "chroot QEMU into an empty directory of its sandbox before the guest runs", field: func(s *Serve) any { return &s.VMMChroot }},
	{key: "jailer", usage: "run Firecracker through this jailer binary (as vmm-user, chrooted under jailer-chroot-base)", field: func(s *Serve) any { return &s.Jailer }},
	{key: "jailer-chroot-base", usage: "directory the jailer makes its chroots under", field: func(s *Serve) any { return &s.JailerChrootBase }},
	{key: "jailer-cpu-max", usage: `cgroup v2 cpu.max the jailer sets for each Firecracker ("200000 100000"); empty: none`,
		field: func(s *Serve) any { return &s.JailerCPUMax }},
	{key: "jailer-memory-max", usage: "cgroup v2 memory.max (bytes) the jailer sets for each Firecracker; empty: none",
		field: func(s *Serve) any { return &s.JailerMemoryMax }},
}

// Keys returns every setting's key, in order.
func Keys() []string {
	out := make([]string, len(settings))
	for i, st := range settings {
		out[i] = st.key
	}
	return out
}

// Choices returns the values a setting with a fixed set takes, without the
// empty "automatic" one; nil for any other setting.
func Choices(key string) []string {
	st, _ := lookup(key)
	var out []string
	for _, v := range st.oneOf {
		if v != "" && v != "auto" {
			out = append(out, v)
		}
	}
	return out
}

func isKey(key string) bool {
	_, ok := lookup(key)
	return ok
}

func lookup(key string) (setting, bool) {
	for _, st := range settings {
		if st.key == key {
			return st, true
		}
	}
	return setting{}, false
}

// Source says where an effective value came from.
type Source struct {
	// Kind is one of the Source kinds.
	Kind string
	// File and Line locate a value read from the file.
	File string
	Line int
	// Name is the environment variable or flag ("--listen").
	Name string
}

// Source kinds.
const (
	FromDefault = "default"
	FromFile    = "file"
	FromEnv     = "env"
	FromFlag    = "flag"
)

// String says where a value came from as --print-config prints it:
// "default", "/etc/ember/ember.toml:3", "flag --listen", "environment
// EMBER_CACHE_DIR".
func (s Source) String() string {
	switch s.Kind {
	case FromFile:
		return fmt.Sprintf("%s:%d", s.File, s.Line)
	case FromEnv:
		return "environment " + s.Name
	case FromFlag:
		return "flag " + s.Name
	}
	return FromDefault
}

// Config is an effective configuration and where each value came from.
type Config struct {
	Serve
	// File is the configuration file that was read; "" when none was.
	File string
	// From maps every key to the source of its value.
	From map[string]Source
}

// Describe names a setting's value the way the operator gave it, for
// messages about it: "--accel kvm" from a flag, `accel = "kvm"
// (/etc/ember/ember.toml:3)` from the file, `accel = "kvm"` otherwise.
func (c *Config) Describe(key string) string {
	st, ok := lookup(key)
	if !ok {
		return key
	}
	v := value(st.field(&c.Serve))
	switch src := c.From[key]; src.Kind {
	case FromFlag:
		if p, ok := st.field(&c.Serve).(*string); ok {
			return src.Name + " " + *p
		}
		return src.Name + "=" + v
	case FromFile, FromEnv:
		return fmt.Sprintf("%s = %s (%s)", key, v, src)
	}
	return fmt.Sprintf("%s = %s", key, v)
}

// Error is a bad configuration value or key. Line is 0 for a value that
// did not come from the file.
type Error struct {
	File      string
	Line, Col int
	Key       string
	Msg       string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Flags registers every setting as a flag on fs, with the defaults as the
// flags' defaults, and returns the values the flags set. Pass both to Load.
func Flags(fs *pflag.FlagSet) *Serve {
	v := Default()
	for _, st := range settings {
		switch p := st.field(&v).(type) {
		case *string:
			fs.StringVar(p, st.key, *p, st.usage)
		case *int:
			fs.IntVar(p, st.key, *p, st.usage)
		case *bool:
			fs.BoolVar(p, st.key, *p, st.usage)
		case *float64:
			fs.Float64Var(p, st.key, *p, st.usage)
		default:
			panic(fmt.Sprintf("config: setting %s has unsupported type %T", st.key, p))
		}
	}
	return &v
}

// Load returns the effective configuration: the defaults, then the file
// at path ("" reads DefaultPath where it exists), then the environment
// (getenv; nil reads none), then every flag set on flags, whose values Flags
// bound to flagged. A missing named file, a key no setting has, a value of
// the wrong type or outside the values a setting takes is an error naming
// the key and where it came from; errors.As finds an *Error.
func Load(path string, flags *pflag.FlagSet, flagged *Serve, getenv func(string) string) (*Config, error) {
	c := newConfig()
	explicit := path != ""
	if !explicit {
		path = DefaultPath
	}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := c.decode(path, b); err != nil {
			return nil, err
		}
		c.File = path
	case errors.Is(err, fs.ErrNotExist) && !explicit:
	default:
		return nil, fmt.Errorf("read config: %w", err)
	}
	if getenv != nil {
		for _, st := range settings {
			if st.env == "" {
				continue
			}
			if v := getenv(st.env); v != "" {
				if err := set(st.field(&c.Serve), v); err != nil {
					return nil, &Error{Key: st.key, Msg: fmt.Sprintf("environment %s=%q: %v", st.env, v, err)}
				}
				c.From[st.key] = Source{Kind: FromEnv, Name: st.env}
			}
		}
	}
	if flags != nil && flagged != nil {
		for _, st := range settings {
			if f := flags.Lookup(st.key); f != nil && f.Changed {
				copyValue(st.field(&c.Serve), st.field(flagged))
				c.From[st.key] = Source{Kind: FromFlag, Name: "--" + st.key}
			}
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// newConfig returns the defaults, each from FromDefault.
func newConfig() *Config {
	c := &Config{Serve: Default(), From: map[string]Source{}}
	for _, st := range settings {
		c.From[st.key] = Source{Kind: FromDefault}
	}
	return c
}

// Parse reads a configuration file's content over the defaults, as Load
// does for the file alone; name is the file's name in errors.
func Parse(name string, b []byte) (*Config, error) {
	c := newConfig()
	c.File = name
	if err := c.decode(name, b); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// decode reads the file's keys into c: strictly (unknown keys and tables
// are errors, each with its line), then records the line of every key set.
func (c *Config) decode(name string, b []byte) error {
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(&c.Serve); err != nil {
		return fileError(name, err)
	}
	p := unstable.Parser{}
	p.Reset(b)
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.KeyValue {
			continue
		}
		it := e.Key()
		if !it.Next() {
			continue
		}
		n := it.Node()
		key := string(n.Data)
		if _, ok := lookup(key); ok {
			c.From[key] = Source{Kind: FromFile, File: name, Line: p.Shape(p.Range(n.Data)).Start.Line}
		}
	}
	if err := p.Error(); err != nil {
		return &Error{File: name, Msg: err.Error()}
	}
	return nil
}

// typeWord names what a Go value of a setting's type is in TOML.
func typeWord(v any) string {
	switch v.(type) {
	case *int:
		return "an integer"
	case *bool:
		return "true or false"
	case *float64:
		return "a number"
	}
	return "a string"
}

// tomlGot extracts the TOML type the decoder found from its message
// ("cannot decode TOML integer into ...").
var tomlGot = regexp.MustCompile(`cannot decode TOML (\w+)`)

// fileError turns the decoder's errors into errors naming the file, the
// line and the key, in ember's words.
func fileError(name string, err error) error {
	var missing *toml.StrictMissingError
	if errors.As(err, &missing) {
		var errs []error
		hint := false
		for _, e := range missing.Errors {
			row, col := e.Position()
			key := strings.Join(e.Key(), ".")
			msg := "unknown key"
			switch alt := strings.ReplaceAll(key, "_", "-"); {
			case strings.Contains(e.Error(), "missing table"):
				msg = "unknown table: there are no tables, every setting is a top-level key"
			case alt != key && isKey(alt):
				msg += fmt.Sprintf(" (did you mean %q?)", alt)
			default:
				hint = true
			}
			errs = append(errs, &Error{File: name, Line: row, Col: col, Key: key, Msg: msg})
		}
		if hint {
			errs = append(errs, errors.New("the keys are the flags of `ember serve`: "+strings.Join(Keys(), ", ")))
		}
		return errors.Join(errs...)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		key := strings.Join(de.Key(), ".")
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if st, ok := lookup(key); ok && strings.Contains(msg, "cannot decode") {
			v := Default()
			msg = "want " + typeWord(st.field(&v))
			if m := tomlGot.FindStringSubmatch(de.Error()); m != nil {
				msg += ", got " + article(m[1])
			}
		}
		return &Error{File: name, Line: row, Col: col, Key: key, Msg: msg}
	}
	return &Error{File: name, Msg: err.Error()}
}

// article puts "a" or "an" before a word.
func article(w string) string {
	if w != "" && strings.ContainsRune("aeiou", rune(w[0])) {
		return "an " + w
	}
	return "a " + w
}

// set parses s into the setting at p (for values from the environment).
func set(p any, s string) error {
	switch p := p.(type) {
	case *string:
		*p = s
	case *int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return errors.New("want an integer")
		}
		*p = n
	case *bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return errors.New("want true or false")
		}
		*p = b
	case *float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return errors.New("want a number")
		}
		*p = f
	}
	return nil
}

// copyValue copies the setting at src to dst, both pointers of one type.
func copyValue(dst, src any) {
	switch d := dst.(type) {
	case *string:
		*d = *src.(*string)
	case *int:
		*d = *src.(*int)
	case *bool:
		*d = *src.(*bool)
	case *float64:
		*d = *src.(*float64)
	}
}

// validate checks each value against what its setting takes, naming the
// value's source.
func (c *Config) validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		src := c.From[key]
		e := &Error{Key: key, Msg: fmt.Sprintf(format, args...)}
		switch src.Kind {
		case FromFile:
			e.File, e.Line = src.File, src.Line
		case FromFlag, FromEnv:
			e.Msg = src.String() + ": " + e.Msg
		}
		errs = append(errs, e)
	}
	for _, st := range settings {
		switch p := st.field(&c.Serve).(type) {
		case *string:
			if st.oneOf != nil && !slices.Contains(st.oneOf, *p) {
				bad(st.key, "%q: want %s", *p, alternatives(st.oneOf))
			}
		case *int:
			if st.nonNegative && *p < 0 {
				bad(st.key, "%d: must not be negative", *p)
			}
		}
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q: want HOST:PORT (%v)", c.Listen, err)
	}
	if _, err := netip.ParsePrefix(c.BridgeCIDR); err != nil {
		bad("bridge-cidr", "%q: want a CIDR such as 172.30.0.0/24", c.BridgeCIDR)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		bad("log-level", "%q: want debug, info, warn or error", c.LogLevel)
	}
	if c.DataDir == "" {
		bad("data-dir", "must not be empty")
	}
	if d, err := time.ParseDuration(c.MetricsInterval); err != nil || d <= 0 {
		bad("metrics-interval", "%q: want a positive duration such as 5s", c.MetricsInterval)
	}
	c.validateE2B(bad)
	c.validateHardening(bad)
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			bad("metrics-listen", "%q: want HOST:PORT (%v)", c.MetricsListen, err)
		}
	}
	if _, err := c.WarmPools(); err != nil {
		bad("warm", "%q: %v", c.Warm, err)
	}
	return errors.Join(errs...)
}

// WarmPools reads Warm: each template's pool size, in the order given. A
// template named twice, a count that is not a non-negative integer or an
// entry without one is an error.
func (s Serve) WarmPools() ([]WarmPool, error) {
	var out []WarmPool
	seen := map[string]bool{}
	for _, e := range strings.Split(s.Warm, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		name, count, ok := strings.Cut(e, "=")
		name, count = strings.TrimSpace(name), strings.TrimSpace(count)
		n, err := strconv.Atoi(count)
		switch {
		case !ok || name == "":
			return nil, fmt.Errorf("entry %q: want TEMPLATE=COUNT", e)
		case err != nil || n < 0:
			return nil, fmt.Errorf("entry %q: want a count of 0 or more", e)
		case seen[name]:
			return nil, fmt.Errorf("template %q given twice", name)
		}
		seen[name] = true
		out = append(out, WarmPool{Template: name, Count: n})
	}
	return out, nil
}

// WarmPool is one entry of the warm setting.
type WarmPool struct {
	Template string
	Count    int
}

func alternatives(vals []string) string {
	q := make([]string, 0, len(vals))
	for _, v := range vals {
		q = append(q, strconv.Quote(v))
	}
	return "one of " + strings.Join(q, ", ")
}

// Write prints the effective configuration as a file ember reads back, each
// value followed by where it came from.
func (c *Config) Write(w io.Writer) error {
	var b strings.Builder
	b.WriteString("# ember serve: the effective configuration, each value with where it came from.\n")
	if c.File != "" {
		fmt.Fprintf(&b, "# file: %s\n", c.File)
	} else {
		fmt.Fprintf(&b, "# file: none (%s does not exist)\n", DefaultPath)
	}
	for _, st := range settings {
		fmt.Fprintf(&b, "%s = %s # %s\n", st.key, value(st.field(&c.Serve)), c.From[st.key])
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Example returns a configuration file holding every setting at its
// default, commented out, each under its help text: the file `make install`
// puts in /etc/ember.
func Example() string {
	var b strings.Builder
	b.WriteString("# ember serve's configuration. Every key is also a flag of `ember serve`\n" +
		"# (--KEY), which overrides the file; `ember serve --print-config` shows the\n" +
		"# effective values and where each came from. Uncomment to change a default.\n")
	d := Default()
	for _, st := range settings {
		fmt.Fprintf(&b, "\n# %s", st.usage)
		if st.env != "" {
			fmt.Fprintf(&b, " (the environment's %s overrides the file)", st.env)
		}
		fmt.Fprintf(&b, "\n#%s = %s\n", st.key, value(st.field(&d)))
	}
	return b.String()
}

// value renders a setting's value as TOML.
func value(p any) string {
	switch p := p.(type) {
	case *string:
		return quote(*p)
	case *int:
		return strconv.Itoa(*p)
	case *bool:
		return strconv.FormatBool(*p)
	case *float64:
		return strconv.FormatFloat(*p, 'g', -1, 64)
	}
	return ""
}

// quote writes s as a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// e2bDomains are the domains E2B's SDKs treat as E2B's own cloud: given one
// as a sandbox's domain, they send its envd traffic, access token included,
// to sandbox.<domain>.
var e2bDomains = []string{"e2b.app", "e2b.dev", "e2b.pro", "e2b-staging.dev"}

// E2BTemplateMap parses e2b-templates ("NAME=TEMPLATE,…"), validated by Load.
func (s Serve) E2BTemplateMap() map[string]string {
	m, _ := parseTemplateMap(s.E2BTemplates)
	return m
}

func parseTemplateMap(v string) (map[string]string, error) {
	out := map[string]string{}
	for _, pair := range strings.Split(v, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		name, tpl, ok := strings.Cut(pair, "=")
		name, tpl = strings.TrimSpace(name), strings.TrimSpace(tpl)
		if !ok || name == "" || tpl == "" {
			return nil, fmt.Errorf("%q: want NAME=TEMPLATE", pair)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("%q named twice", name)
		}
		out[name] = tpl
	}
	return out, nil
}

// validateE2B checks the settings the E2B facade and TLS read.
func (c *Config) validateE2B(bad func(key, format string, args ...any)) {
	if _, err := parseTemplateMap(c.E2BTemplates); err != nil {
		bad("e2b-templates", "%v", err)
	}
	d := strings.ToLower(strings.TrimSuffix(c.Domain, "."))
	for _, e := range e2bDomains {
		if d == e || strings.HasSuffix(d, "."+e) {
			bad("domain", "%q: E2B's SDKs send the traffic of sandboxes on %s to E2B's cloud, with their access tokens; use a domain of your own", c.Domain, e)
		}
	}
	if c.TLSListen != "" {
		if _, _, err := net.SplitHostPort(c.TLSListen); err != nil {
			bad("tls-listen", "%q: want HOST:PORT (%v)", c.TLSListen, err)
		}
		if c.TLSCert == "" || c.TLSKey == "" {
			bad("tls-listen", "needs tls-cert and tls-key")
		}
	} else if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("tls-cert", "tls-cert and tls-key go together: give both or neither")
	}
}

// validateHardening checks the admission, cgroup and confinement settings.
func (c *Config) validateHardening(bad func(key, format string, args ...any)) {
	if c.VCPUOvercommit <= 0 {
		bad("vcpu-overcommit", "%g: must be above 0", c.VCPUOvercommit)
	}
	if c.MaxParallelCreates < 1 {
		bad("max-parallel-creates", "%d: must be at least 1", c.MaxParallelCreates)
	}
	if d, err := time.ParseDuration(c.CreateQueueWait); err != nil || d <= 0 {
		bad("create-queue-wait", "%q: want a positive duration such as 20s", c.CreateQueueWait)
	}
	if c.CPUPerVCPU <= 0 {
		bad("cpu-per-vcpu", "%g: must be above 0", c.CPUPerVCPU)
	}
	if c.PidsLimit < 16 {
		bad("pids-limit", "%d: a VMM needs at least 16", c.PidsLimit)
	}
	if c.IOWeight < 10 || c.IOWeight > 1000 {
		bad("io-weight", "%d: must be between 10 and 1000", c.IOWeight)
	}
}
