package proto

import (
	"encoding/base64"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	gproto "google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/emberhq/ember/internal/agent/proto/filesystem"
	"github.com/emberhq/ember/internal/agent/proto/process"
)

// ours returns our generated descriptors keyed by file name.
func ours() map[string]*descriptorpb.FileDescriptorProto {
	return map[string]*descriptorpb.FileDescriptorProto{
		"process/process.proto":       protodesc.ToFileDescriptorProto(process.File_process_process_proto),
		"filesystem/filesystem.proto": protodesc.ToFileDescriptorProto(filesystem.File_filesystem_filesystem_proto),
	}
}

// e2bPackage finds the installed e2b npm package, skipping (or failing under
// EMBER_REQUIRE_ALL=1) when it is not there.
func e2bPackage(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("EMBER_E2B_PKG")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "test", "e2b", "node_modules", "e2b")
	}
	if _, err := os.Stat(filepath.Join(dir, "package.json")); err != nil {
		msg := fmt.Sprintf("e2b npm package not found at %s (%v): run `npm ci --prefix test/e2b` or set EMBER_E2B_PKG", dir, err)
		if os.Getenv("EMBER_REQUIRE_ALL") == "1" {
			t.Fatalf("%s (EMBER_REQUIRE_ALL=1 forbids this skip)", msg)
		}
		t.Skip(msg)
	}
	return dir
}

// fileDescRe matches the serialized descriptors that @bufbuild/protobuf's
// generated code passes to fileDesc, in both the CommonJS form
// `(0, x.fileDesc)("...")` and the ES module form `fileDesc("...")`.
var fileDescRe = regexp.MustCompile(`fileDesc\)?\(\s*"([A-Za-z0-9+/=]+)"`)

// extractDescriptors decodes every descriptor embedded in the given JS,
// keyed by file name.
func extractDescriptors(js []byte) (map[string]*descriptorpb.FileDescriptorProto, error) {
	out := map[string]*descriptorpb.FileDescriptorProto{}
	for _, m := range fileDescRe.FindAllSubmatch(js, -1) {
		raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(string(m[1]), "="))
		if err != nil {
			return nil, fmt.Errorf("decode base64 descriptor: %w", err)
		}
		fd := &descriptorpb.FileDescriptorProto{}
		if err := gproto.Unmarshal(raw, fd); err != nil {
			return nil, fmt.Errorf("unmarshal descriptor: %w", err)
		}
		out[fd.GetName()] = fd
	}
	return out, nil
}

// TestContractMatchesSDK checks our .proto files against the descriptors
// compiled into the pinned e2b SDK, field for field.
func TestContractMatchesSDK(t *testing.T) {
	dir := e2bPackage(t)
	js, err := os.ReadFile(filepath.Join(dir, "dist", "index.js"))
	if err != nil {
		t.Fatalf("read SDK bundle: %v", err)
	}
	sdk, err := extractDescriptors(js)
	if err != nil {
		t.Fatal(err)
	}
	for name, our := range ours() {
		want, ok := sdk[name]
		if !ok {
			t.Errorf("%s: not embedded in %s/dist/index.js (found %v)", name, dir, slices.Sorted(maps.Keys(sdk)))
			continue
		}
		for _, d := range diffFile(want, our) {
			t.Errorf("%s: %s", name, d)
		}
	}
}

// TestDiffFileDetects proves the comparison can fail: each case mutates a
// copy of our own descriptor and expects the named difference.
func TestDiffFileDetects(t *testing.T) {
	msg := func(fd *descriptorpb.FileDescriptorProto, name string) *descriptorpb.DescriptorProto {
		for _, m := range fd.MessageType {
			if m.GetName() == name {
				return m
			}
		}
		t.Fatalf("no message %s", name)
		return nil
	}
	field := func(m *descriptorpb.DescriptorProto, name string) *descriptorpb.FieldDescriptorProto {
		for _, f := range m.Field {
			if f.GetName() == name {
				return f
			}
		}
		t.Fatalf("no field %s in %s", name, m.GetName())
		return nil
	}
	tests := []struct {
		name   string
		file   string
		mutate func(fd *descriptorpb.FileDescriptorProto)
		want   string
	}{
		{"none", "process/process.proto", func(*descriptorpb.FileDescriptorProto) {}, ""},
		{"field number", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			field(msg(fd, "StartRequest"), "stdin").Number = gproto.Int32(5)
		}, "message process.StartRequest field stdin: number 5, ours 4"},
		{"field renamed", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			field(msg(fd, "ProcessConfig"), "cwd").Name = gproto.String("dir")
		}, "field process.ProcessConfig.dir missing from ours"},
		{"field type", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			field(msg(fd, "ProcessEvent").NestedType[2], "exit_code").Type = descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum()
		}, "message process.ProcessEvent.EndEvent field exit_code: type TYPE_INT32, ours TYPE_SINT32"},
		{"label", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			field(msg(fd, "ProcessConfig"), "args").Label = descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
		}, "field args: label LABEL_OPTIONAL, ours LABEL_REPEATED"},
		{"proto3 optional", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			field(msg(fd, "StartRequest"), "tag").Proto3Optional = nil
		}, "field tag: proto3_optional false, ours true"},
		{"oneof", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			m := msg(fd, "ProcessSelector")
			m.OneofDecl[0].Name = gproto.String("which")
		}, "field pid: oneof which, ours selector"},
		{"type name", "filesystem/filesystem.proto", func(fd *descriptorpb.FileDescriptorProto) {
			field(msg(fd, "EntryInfo"), "type").TypeName = gproto.String(".filesystem.EventType")
		}, "field type: type_name .filesystem.EventType, ours .filesystem.FileType"},
		{"extra message", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			fd.MessageType = append(fd.MessageType, &descriptorpb.DescriptorProto{Name: gproto.String("Extra")})
		}, "message process.Extra missing"},
		{"enum value", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			fd.EnumType[0].Value[1].Number = gproto.Int32(16)
		}, "enum process.Signal value SIGNAL_SIGTERM: number 16, ours 15"},
		{"method streaming", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			fd.Service[0].Method[0].ServerStreaming = gproto.Bool(true)
		}, "method process.Process.List: server_streaming true, ours false"},
		{"method input", "filesystem/filesystem.proto", func(fd *descriptorpb.FileDescriptorProto) {
			fd.Service[0].Method[0].InputType = gproto.String(".filesystem.ListDirRequest")
		}, "method filesystem.Filesystem.Stat: input .filesystem.ListDirRequest, ours .filesystem.StatRequest"},
		{"extra method", "process/process.proto", func(fd *descriptorpb.FileDescriptorProto) {
			fd.Service[0].Method = append(fd.Service[0].Method, &descriptorpb.MethodDescriptorProto{Name: gproto.String("Resize")})
		}, "method process.Process.Resize missing"},
		{"package", "filesystem/filesystem.proto", func(fd *descriptorpb.FileDescriptorProto) {
			fd.Package = gproto.String("fs")
		}, "package fs, ours filesystem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			our := ours()[tt.file]
			want := gproto.Clone(our).(*descriptorpb.FileDescriptorProto)
			tt.mutate(want)
			diffs := diffFile(want, our)
			if tt.want == "" {
				if len(diffs) != 0 {
					t.Fatalf("unexpected differences:\n%s", strings.Join(diffs, "\n"))
				}
				return
			}
			for _, d := range diffs {
				if strings.Contains(d, tt.want) {
					return
				}
			}
			t.Fatalf("want a difference containing %q, got:\n%s", tt.want, strings.Join(diffs, "\n"))
		})
	}
}

// TestExtractDescriptors covers both bundle forms the SDK ships.
func TestExtractDescriptors(t *testing.T) {
	raw, err := gproto.Marshal(&descriptorpb.FileDescriptorProto{Name: gproto.String("x/x.proto"), Package: gproto.String("x")})
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(raw)
	tests := []struct {
		name string
		js   string
		want []string
	}{
		{"commonjs", `const f = /*@__PURE__*/ (0, _bufbuild_protobuf_codegenv2.fileDesc)("` + b64 + `", [dep]);`, []string{"x/x.proto"}},
		{"esm", `const f = fileDesc("` + strings.TrimRight(b64, "=") + `");`, []string{"x/x.proto"}},
		{"none", `const f = 1;`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := extractDescriptors([]byte(tt.js))
			if err != nil {
				t.Fatal(err)
			}
			if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, tt.want) {
				t.Fatalf("got %v, want %v", keys, tt.want)
			}
		})
	}
}

// diffFile lists every way ours differs from want in what goes on the wire
// or into generated clients: package, syntax, messages (recursively), fields,
// oneofs, enums, services and methods. File options, dependencies and
// json_name are left out: the SDK's embedded descriptors drop them.
func diffFile(want, ours *descriptorpb.FileDescriptorProto) []string {
	var d differ
	d.eq("package", want.GetPackage(), ours.GetPackage())
	d.eq("syntax", want.GetSyntax(), ours.GetSyntax())
	prefix := want.GetPackage()
	d.messages(prefix, want.MessageType, ours.MessageType)
	d.enums(prefix, want.EnumType, ours.EnumType)
	d.services(prefix, want.Service, ours.Service)
	return d.out
}

type differ struct{ out []string }

func (d *differ) add(format string, args ...any) { d.out = append(d.out, fmt.Sprintf(format, args...)) }

func (d *differ) eq(what string, want, ours any) {
	if want != ours {
		d.add("%s %v, ours %v", what, want, ours)
	}
}

// pair walks two named lists: missing and extra names are reported, and
// both calls each name present in both.
func pair[T interface{ GetName() string }](d *differ, kind, prefix string, want, ours []T, both func(name string, w, o T)) {
	byName := map[string]T{}
	for _, o := range ours {
		byName[o.GetName()] = o
	}
	seen := map[string]bool{}
	for _, w := range want {
		name := w.GetName()
		seen[name] = true
		o, ok := byName[name]
		if !ok {
			d.add("%s %s.%s missing from ours", kind, prefix, name)
			continue
		}
		both(name, w, o)
	}
	for _, o := range ours {
		if !seen[o.GetName()] {
			d.add("%s %s.%s only in ours", kind, prefix, o.GetName())
		}
	}
}

func (d *differ) messages(prefix string, want, ours []*descriptorpb.DescriptorProto) {
	pair(d, "message", prefix, want, ours, func(name string, w, o *descriptorpb.DescriptorProto) {
		full := prefix + "." + name
		d.eqf(full, "map_entry", w.GetOptions().GetMapEntry(), o.GetOptions().GetMapEntry())
		oneof := func(m *descriptorpb.DescriptorProto, f *descriptorpb.FieldDescriptorProto) string {
			if f.OneofIndex == nil {
				return "(none)"
			}
			if i := int(f.GetOneofIndex()); i < len(m.OneofDecl) {
				return m.OneofDecl[i].GetName()
			}
			return fmt.Sprintf("(bad index %d)", f.GetOneofIndex())
		}
		pair(d, "field", full, w.Field, o.Field, func(fname string, wf, of *descriptorpb.FieldDescriptorProto) {
			at := "message " + full + " field " + fname
			d.eqf(at, "number", wf.GetNumber(), of.GetNumber())
			d.eqf(at, "type", wf.GetType(), of.GetType())
			d.eqf(at, "type_name", wf.GetTypeName(), of.GetTypeName())
			d.eqf(at, "label", wf.GetLabel(), of.GetLabel())
			d.eqf(at, "oneof", oneof(w, wf), oneof(o, of))
			d.eqf(at, "proto3_optional", wf.GetProto3Optional(), of.GetProto3Optional())
		})
		var wo, oo []string
		for _, x := range w.OneofDecl {
			wo = append(wo, x.GetName())
		}
		for _, x := range o.OneofDecl {
			oo = append(oo, x.GetName())
		}
		d.eqf(full, "oneofs", fmt.Sprint(wo), fmt.Sprint(oo))
		d.messages(full, w.NestedType, o.NestedType)
		d.enums(full, w.EnumType, o.EnumType)
	})
}

func (d *differ) eqf(at, what string, want, ours any) {
	if want != ours {
		d.add("%s: %s %v, ours %v", at, what, want, ours)
	}
}

func (d *differ) enums(prefix string, want, ours []*descriptorpb.EnumDescriptorProto) {
	pair(d, "enum", prefix, want, ours, func(name string, w, o *descriptorpb.EnumDescriptorProto) {
		full := prefix + "." + name
		pair(d, "enum value", full, w.Value, o.Value, func(vname string, wv, ov *descriptorpb.EnumValueDescriptorProto) {
			d.eqf("enum "+full+" value "+vname, "number", wv.GetNumber(), ov.GetNumber())
		})
	})
}

func (d *differ) services(prefix string, want, ours []*descriptorpb.ServiceDescriptorProto) {
	pair(d, "service", prefix, want, ours, func(name string, w, o *descriptorpb.ServiceDescriptorProto) {
		full := prefix + "." + name
		pair(d, "method", full, w.Method, o.Method, func(mname string, wm, om *descriptorpb.MethodDescriptorProto) {
			at := "method " + full + "." + mname
			d.eqf(at, "input", wm.GetInputType(), om.GetInputType())
			d.eqf(at, "output", wm.GetOutputType(), om.GetOutputType())
			d.eqf(at, "client_streaming", wm.GetClientStreaming(), om.GetClientStreaming())
			d.eqf(at, "server_streaming", wm.GetServerStreaming(), om.GetServerStreaming())
		})
	})
}
