package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/emberhq/ember/internal/api"
	"github.com/emberhq/ember/internal/network"
	"github.com/emberhq/ember/internal/template"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		// check inspects a good file's result.
		check func(t *testing.T, c *Config)
		// errKey, errLine and errText describe the error of a bad one.
		errKey  string
		errLine int
		errText string
	}{
		{name: "empty", doc: "", check: func(t *testing.T, c *Config) {
			if c.Serve != Default() {
				t.Errorf("got %+v, want the defaults", c.Serve)
			}
			for k, src := range c.From {
				if src.Kind != FromDefault {
					t.Errorf("%s from %s", k, src)
				}
			}
		}},
		{name: "values and their lines", doc: "# a comment\nlisten = \"0.0.0.0:80\"\n\nslot-count = 20\nno-egress = true\nrootfs = 'copy'\n",
			check: func(t *testing.T, c *Config) {
				if c.Listen != "0.0.0.0:80" || c.SlotCount != 20 || !c.NoEgress || c.Rootfs != "copy" {
					t.Errorf("got %+v", c.Serve)
				}
				for key, line := range map[string]int{"listen": 2, "slot-count": 4, "no-egress": 5, "rootfs": 6} {
					if got := c.From[key]; got.Kind != FromFile || got.Line != line || got.File != "ember.toml" {
						t.Errorf("%s from %+v, want ember.toml:%d", key, got, line)
					}
				}
				if c.From["data-dir"].Kind != FromDefault || c.DataDir != DefaultDataDir {
					t.Errorf("data-dir %q from %s", c.DataDir, c.From["data-dir"])
				}
			}},
		{name: "unknown key", doc: "listen = \"a:1\"\nbogus = 1\n", errKey: "bogus", errLine: 2, errText: "unknown key"},
		{name: "underscore for a dash", doc: "\ndata_dir = \"/x\"\n", errKey: "data_dir", errLine: 2, errText: `did you mean "data-dir"?`},
		{name: "a table", doc: "[network]\nmode = \"bridge\"\n", errKey: "network", errLine: 1, errText: "every setting is a top-level key"},
		{name: "string for an integer", doc: "slot-first = \"7\"\n", errKey: "slot-first", errLine: 1, errText: "want an integer, got a string"},
		{name: "float for an integer", doc: "slot-pool = 1.5\n", errKey: "slot-pool", errLine: 1, errText: "want an integer, got a float"},
		{name: "integer for a string", doc: "\n\nlisten = 7070\n", errKey: "listen", errLine: 3, errText: "want a string, got an integer"},
		{name: "string for a bool", doc: "no-egress = \"yes\"\n", errKey: "no-egress", errLine: 1, errText: "want true or false"},
		{name: "value outside the set", doc: "\nrootfs = \"zfs\"\n", errKey: "rootfs", errLine: 2, errText: `"zfs": want one of "", "auto", "devmapper"`},
		{name: "unknown vmm", doc: "vmm = \"kvmtool\"\n", errKey: "vmm", errLine: 1, errText: `want one of "", "firecracker", "qemu"`},
		{name: "negative count", doc: "slot-count = -1\n", errKey: "slot-count", errLine: 1, errText: "must not be negative"},
		{name: "listen without a port", doc: "listen = \"localhost\"\n", errKey: "listen", errLine: 1, errText: "want HOST:PORT"},
		{name: "bad cidr", doc: "bridge-cidr = \"172.30.0.0\"\n", errKey: "bridge-cidr", errLine: 1, errText: "want a CIDR"},
		{name: "bad log level", doc: "log-level = \"loud\"\n", errKey: "log-level", errLine: 1, errText: "want debug, info, warn or error"},
		{name: "empty data dir", doc: "data-dir = \"\"\n", errKey: "data-dir", errLine: 1, errText: "must not be empty"},
		{name: "key twice", doc: "domain = \"a\"\ndomain = \"b\"\n", errKey: "domain", errLine: 2, errText: "already defined"},
		{name: "syntax", doc: "listen = \n", errLine: 1, errText: "start of value"},
		{name: "warm pools", doc: "warm = \"base=4, py = 2,\"\n", check: func(t *testing.T, c *Config) {
			got, err := c.WarmPools()
			want := []WarmPool{{"base", 4}, {"py", 2}}
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("WarmPools() = %v, %v; want %v", got, err, want)
			}
		}},
		{name: "warm without a count", doc: "warm = \"base\"\n", errKey: "warm", errLine: 1, errText: `entry "base": want TEMPLATE=COUNT`},
		{name: "warm negative", doc: "warm = \"base=-1\"\n", errKey: "warm", errLine: 1, errText: "want a count of 0 or more"},
		{name: "warm twice", doc: "warm = \"base=1,base=2\"\n", errKey: "warm", errLine: 1, errText: `template "base" given twice`},
		{name: "e2b templates", doc: "e2b-templates = \"base = big, code-interpreter-v1=py\"\n", check: func(t *testing.T, c *Config) {
			if m := c.E2BTemplateMap(); len(m) != 2 || m["base"] != "big" || m["code-interpreter-v1"] != "py" {
				t.Errorf("map %v", m)
			}
		}},
		{name: "e2b template without its template", doc: "e2b-templates = \"base=big,py\"\n", errKey: "e2b-templates", errLine: 1, errText: `"py": want NAME=TEMPLATE`},
		{name: "e2b template twice", doc: "e2b-templates = \"a=b,a=c\"\n", errKey: "e2b-templates", errLine: 1, errText: `"a" named twice`},
		{name: "an e2b domain", doc: "domain = \"sbx.e2b.app\"\n", errKey: "domain", errLine: 1, errText: "to E2B's cloud"},
		{name: "tls without a key", doc: "tls-listen = \"127.0.0.1:7443\"\ntls-cert = \"c.pem\"\n", errKey: "tls-listen", errLine: 1, errText: "needs tls-cert and tls-key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("ember.toml", []byte(tc.doc))
			if tc.check != nil {
				if err != nil {
					t.Fatal(err)
				}
				tc.check(t, c)
				return
			}
			if err == nil {
				t.Fatalf("parsed %+v, want an error", c.Serve)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("err %v (%T) is no *Error", err, err)
			}
			if ce.Key != tc.errKey || ce.Line != tc.errLine || ce.File != "ember.toml" || !strings.Contains(err.Error(), tc.errText) {
				t.Fatalf("err %q (key %q line %d), want key %q line %d containing %q", err, ce.Key, ce.Line, tc.errKey, tc.errLine, tc.errText)
			}
			if !strings.HasPrefix(err.Error(), "ember.toml:") {
				t.Errorf("err %q does not start with the file and line", err)
			}
		})
	}
}

func TestEveryUnknownKeyIsReported(t *testing.T) {
	_, err := Parse("f", []byte("a = 1\nlisten = \"x:1\"\nb = 2\n"))
	if err == nil || !strings.Contains(err.Error(), "f:1: a: unknown key") || !strings.Contains(err.Error(), "f:3: b: unknown key") {
		t.Fatalf("err %v, want both unknown keys with their lines", err)
	}
}

func TestLoadLayers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ember.toml")
	if err := os.WriteFile(path, []byte("listen = \"127.0.0.1:1\"\ncache-dir = \"/file/cache\"\ndomain = \"file.example\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"EMBER_CACHE_DIR": "/env/cache"}
	cases := []struct {
		name  string
		args  []string
		env   map[string]string
		key   string
		want  string
		check func(c *Config) string
		from  Source
	}{
		{"file over default", nil, nil, "domain", "file.example", func(c *Config) string { return c.Domain }, Source{Kind: FromFile, File: path, Line: 3}},
		{"env over file", nil, env, "cache-dir", "/env/cache", func(c *Config) string { return c.CacheDir }, Source{Kind: FromEnv, Name: "EMBER_CACHE_DIR"}},
		{"flag over env", []string{"--cache-dir", "/flag/cache"}, env, "cache-dir", "/flag/cache", func(c *Config) string { return c.CacheDir }, Source{Kind: FromFlag, Name: "--cache-dir"}},
		{"flag over file", []string{"--listen=127.0.0.1:2"}, nil, "listen", "127.0.0.1:2", func(c *Config) string { return c.Listen }, Source{Kind: FromFlag, Name: "--listen"}},
		{"flag set to its default still wins", []string{"--domain", "localhost"}, nil, "domain", "localhost", func(c *Config) string { return c.Domain }, Source{Kind: FromFlag, Name: "--domain"}},
		{"default", nil, nil, "data-dir", DefaultDataDir, func(c *Config) string { return c.DataDir }, Source{Kind: FromDefault}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
			flagged := Flags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path, fs, flagged, func(k string) string { return tc.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.check(c); got != tc.want || c.From[tc.key] != tc.from {
				t.Fatalf("%s = %q from %+v, want %q from %+v", tc.key, got, c.From[tc.key], tc.want, tc.from)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	flagged := Flags(fs)
	if err := fs.Parse([]string{"--network-mode", "mesh"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml"), nil, nil, nil); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("missing named file: %v", err)
	}
	_, err := Load(filepath.Join(t.TempDir(), "none.toml"), fs, flagged, nil)
	if err == nil || !strings.Contains(err.Error(), "missing") && !strings.Contains(err.Error(), "none.toml") {
		t.Errorf("missing file with flags: %v", err)
	}
	path := filepath.Join(t.TempDir(), "ember.toml")
	os.WriteFile(path, nil, 0o600)
	_, err = Load(path, fs, flagged, nil)
	if err == nil || !strings.Contains(err.Error(), `network-mode: flag --network-mode: "mesh": want one of "netns", "bridge"`) {
		t.Errorf("bad flag value: %v", err)
	}
	_, err = Load(path, nil, nil, func(string) string { return "" })
	if err != nil {
		t.Errorf("empty file: %v", err)
	}
}

func TestWriteReadsBack(t *testing.T) {
	c, err := Parse("in.toml", []byte("slot-first = 6000\nuplink = \"eth\\\"0\"\nno-egress = true\ndata-dir = \"/srv/ember\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := c.Write(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"slot-first = 6000 # in.toml:1\n", `uplink = "eth\"0" # in.toml:2`, "listen = \"127.0.0.1:7070\" # default\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("print lacks %q:\n%s", want, out)
		}
	}
	again, err := Parse("out.toml", []byte(out))
	if err != nil {
		t.Fatalf("printed configuration does not read back: %v\n%s", err, out)
	}
	if again.Serve != c.Serve {
		t.Fatalf("read back %+v, want %+v", again.Serve, c.Serve)
	}
}

var update = flag.Bool("update", false, "rewrite dist/ember.toml from Example")

// The default config `make install` ships is Example's output, and every
// line in it is a default.
func TestShippedDefaultConfig(t *testing.T) {
	const shipped = "../../dist/ember.toml"
	if *update {
		if err := os.WriteFile(shipped, []byte(Example()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(shipped)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != Example() {
		t.Fatalf("dist/ember.toml is not config.Example(): rewrite it with `go test ./internal/config -run TestShippedDefaultConfig -update`")
	}
	uncommented := strings.NewReplacer("\n#", "\n").Replace(Example())
	var settingsOnly []string
	for _, l := range strings.Split(uncommented, "\n") {
		if strings.Contains(l, " = ") {
			settingsOnly = append(settingsOnly, l)
		}
	}
	c, err := Parse("example", []byte(strings.Join(settingsOnly, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	if c.Serve != Default() || len(settingsOnly) != len(settings) {
		t.Fatalf("example holds %d settings %+v, want all %d at their defaults", len(settingsOnly), c.Serve, len(settings))
	}
}

// Every field of Serve is a setting and a flag, and every setting a field.
func TestEveryFieldIsASettingAndAFlag(t *testing.T) {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	Flags(fs)
	typ := reflect.TypeOf(Serve{})
	if typ.NumField() != len(settings) {
		t.Fatalf("Serve has %d fields, settings %d", typ.NumField(), len(settings))
	}
	for i := range typ.NumField() {
		key := typ.Field(i).Tag.Get("toml")
		if _, ok := lookup(key); !ok {
			t.Errorf("field %s (key %q) is no setting", typ.Field(i).Name, key)
		}
		if fs.Lookup(key) == nil {
			t.Errorf("key %q is no flag", key)
		}
	}
	var s Serve
	seen := map[uintptr]string{}
	for _, st := range settings {
		p := reflect.ValueOf(st.field(&s)).Pointer()
		if other, dup := seen[p]; dup {
			t.Errorf("settings %s and %s share a field", st.key, other)
		}
		seen[p] = st.key
	}
}

// The defaults spelt out here are the configured packages' own.
func TestDefaultsMatchThePackages(t *testing.T) {
	cases := []struct{ name, here, there string }{
		{"template", defaultTemplate, template.DefaultName},
		{"pool size", strconv.Itoa(defaultPoolSize), strconv.Itoa(network.DefaultPoolSize)},
		{"netns mode", modeNetns, network.ModeNetns},
		{"bridge mode", modeBridge, network.ModeBridge},
		{"bridge", defaultBridge, network.DefaultBridge},
		{"bridge cidr", defaultBridgeCIDR, network.DefaultBridgeCIDR.String()},
		{"exec output limit", strconv.Itoa(defaultExecOutput), strconv.Itoa(api.DefaultExecOutputLimit)},
	}
	for _, tc := range cases {
		if tc.here != tc.there {
			t.Errorf("%s: config says %q, its package %q", tc.name, tc.here, tc.there)
		}
	}
}

func TestDescribe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ember.toml")
	os.WriteFile(path, []byte("vmm = \"qemu\"\n"), 0o600)
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	flagged := Flags(fs)
	if err := fs.Parse([]string{"--accel", "kvm", "--no-egress"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, fs, flagged, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ key, want string }{
		{"accel", "--accel kvm"},
		{"no-egress", "--no-egress=true"},
		{"vmm", `vmm = "qemu" (` + path + `:1)`},
		{"rootfs", `rootfs = ""`},
	}
	for _, tc := range cases {
		if got := c.Describe(tc.key); got != tc.want {
			t.Errorf("Describe(%s) = %q, want %q", tc.key, got, tc.want)
		}
	}
}
