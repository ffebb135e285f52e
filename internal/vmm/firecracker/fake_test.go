//go:build linux

package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/oasdiff/yaml"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/memory/uffd"
)

// The fake Firecracker: this test binary, started by the driver as its
// "firecracker" with fakeEnv set, serves the API on --api-sock. It routes
// and validates every request against Firecracker's swagger document and
// keeps Firecracker's state machine; every request and its verdict go to
// the journal file so the tests can check what the driver sent.
const (
	fakeEnv     = "EMBER_FAKE_FIRECRACKER"
	journalEnv  = "EMBER_FAKE_FIRECRACKER_JOURNAL"
	specEnv     = "EMBER_FIRECRACKER_SPEC"
	defaultSpec = "testdata/firecracker-v1.16.1.yaml"
)

// specPath is the swagger document the tests hold the driver to: by default
// Firecracker v1.16.1's own API description (Apache 2.0, as published by the
// Firecracker project), kept in testdata so a clean checkout has it.
func specPath() string {
	if p := os.Getenv(specEnv); p != "" {
		return p
	}
	p, _ := filepath.Abs(defaultSpec)
	return p
}

// validator checks requests against the spec with kin-openapi: the swagger
// 2.0 document converted to OpenAPI 3, routed with gorillamux and checked
// with openapi3filter.
type validator struct {
	router routers.Router
}

func loadValidator(path string) (*validator, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc2 openapi2.T
	if _, err := yaml.Unmarshal(data, &doc2, yaml.DecodeOpts{DisableTimestamps: true}); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("convert %s to openapi 3: %w", path, err)
	}
	if err := doc3.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("validate %s: %w", path, err)
	}
	r, err := gorillamux.NewRouter(doc3)
	if err != nil {
		return nil, err
	}
	return &validator{router: r}, nil
}

// check validates one request (method, path, body); it returns the
// operation's id.
func (v *validator) check(method, path string, body []byte) (string, error) {
	req, err := http.NewRequest(method, "http://localhost"+path, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		return "", fmt.Errorf("%s %s: not in the spec: %w", method, path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{MultiError: true}}
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
		return route.Operation.OperationID, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return route.Operation.OperationID, nil
}

// entry is one journal line.
type entry struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Status int             `json:"status"`
	Fault  string          `json:"fault,omitempty"`
	// Drive is, for a snapshot load, the file the restored root drive is.
	Drive string `json:"drive,omitempty"`
}

// fakeState is Firecracker's microVM state as the API sees it.
type fakeState int

const (
	notStarted fakeState = iota
	running
	paused
)

// fake is the API server's state machine.
type fake struct {
	v       *validator
	journal string
	stop    func()

	mu         sync.Mutex
	state      fakeState
	configured bool // a boot resource was set: snapshot/load is refused
	loaded     bool
	kernel     string
	drive      string // the root drive's path as given, or as a load resolved it
	memMiB     int
	trackDirty bool
	uffdConn   *net.UnixConn
}

// preBoot lists the operations Firecracker accepts only before
// InstanceStart (or a snapshot load).
var preBoot = map[string]bool{
	"putGuestBootSource": true, "putGuestDriveByID": true, "putGuestNetworkInterfaceByID": true,
	"putMachineConfiguration": true, "patchMachineConfiguration": true, "putEntropyDevice": true,
	"putBalloon": true, "putGuestVsock": true, "putLogger": true, "putMetrics": true,
	"putCpuConfiguration": true, "putMmdsConfig": true, "putSerialDevice": true,
}

// bootResource lists the pre-boot operations that configure the machine
// (logger and metrics do not): after one, snapshot/load is refused.
var bootResource = map[string]bool{
	"putGuestBootSource": true, "putGuestDriveByID": true, "putGuestNetworkInterfaceByID": true,
	"putMachineConfiguration": true, "patchMachineConfiguration": true, "putEntropyDevice": true,
	"putBalloon": true, "putGuestVsock": true, "putCpuConfiguration": true,
}

func (f *fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if len(body) == 0 {
		body = nil
	}
	status, fault, out := f.handle(r.Method, r.URL.Path, body)
	e := entry{Method: r.Method, Path: r.URL.Path, Body: json.RawMessage(body), Status: status, Fault: fault}
	if r.URL.Path == "/snapshot/load" && fault == "" {
		e.Drive = f.drive
	}
	f.record(e)
	switch {
	case fault != "":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"fault_message": fault})
	case out != nil:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	default:
		w.WriteHeader(status)
	}
	if r.Method == "PUT" && r.URL.Path == "/actions" && status == http.StatusNoContent && strings.Contains(string(body), "SendCtrlAltDel") {
		// reboot=k: the guest resets and Firecracker exits.
		go f.stop()
	}
}

func (f *fake) record(e entry) {
	if f.journal == "" {
		return
	}
	b, _ := json.Marshal(e)
	fd, err := os.OpenFile(f.journal, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	fd.Write(append(b, '\n'))
	fd.Close()
}

func (f *fake) handle(method, path string, body []byte) (int, string, any) {
	op, err := f.v.check(method, path, body)
	if err != nil {
		return http.StatusBadRequest, "request does not match the API: " + err.Error(), nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var m map[string]any
	json.Unmarshal(body, &m)
	str := func(k string) string { s, _ := m[k].(string); return s }
	started := f.state != notStarted
	if preBoot[op] && started {
		return 400, "The requested operation is not supported after starting the microVM.", nil
	}
	if bootResource[op] {
		f.configured = true
	}
	switch op {
	case "describeInstance":
		return 200, "", map[string]string{"app_name": "Firecracker", "id": "fake", "state": [...]string{"Not started", "Running", "Paused"}[f.state], "vmm_version": "1.16.1"}
	case "putGuestBootSource":
		if _, err := os.Stat(str("kernel_image_path")); err != nil {
			return 400, "Invalid kernel path: " + err.Error(), nil
		}
		f.kernel = str("kernel_image_path")
	case "putGuestDriveByID":
		if _, err := os.Stat(str("path_on_host")); err != nil {
			return 400, "Unable to create the block device: " + err.Error(), nil
		}
		f.drive = str("path_on_host")
	case "putMachineConfiguration":
		n, _ := m["vcpu_count"].(float64)
		if n > 1 && int(n)%2 != 0 {
			return 400, "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.", nil
		}
		mem, _ := m["mem_size_mib"].(float64)
		f.memMiB = int(mem)
		f.trackDirty, _ = m["track_dirty_pages"].(bool)
	case "createSyncAction":
		switch str("action_type") {
		case "InstanceStart":
			if started {
				return 400, "The requested operation is not supported after starting the microVM.", nil
			}
			if f.kernel == "" {
				return 400, "Cannot start microvm without kernel configuration.", nil
			}
			if b, err := os.ReadFile(f.kernel); err != nil || !bytes.HasPrefix(b, []byte("\x7fELF")) {
				return 400, "Cannot load kernel due to invalid memory configuration or invalid kernel image.", nil
			}
			f.state = running
		case "SendCtrlAltDel":
			if !started {
				return 400, "The requested operation is not supported before starting the microVM.", nil
			}
		}
	case "patchVm":
		if !started {
			return 400, "The requested operation is not supported before starting the microVM.", nil
		}
		if str("state") == "Paused" {
			f.state = paused
		} else {
			f.state = running
		}
	case "createSnapshot":
		if f.state != paused {
			return 400, "Cannot create snapshot: the microVM is not paused.", nil
		}
		if str("snapshot_type") == "Diff" && !f.trackDirty {
			return 400, "Diff snapshots are not allowed on uVMs with dirty page tracking disabled.", nil
		}
		// A small memory image: every page distinctive.
		mem := make([]byte, fakeMemSize)
		for i := 0; i < len(mem); i += fakePage {
			copy(mem[i:], pageMark(i, f.memMiB))
		}
		if err := os.WriteFile(str("mem_file_path"), mem, 0o644); err != nil {
			return 400, err.Error(), nil
		}
		// Like Firecracker's, the state names the block device's path as
		// it was configured; a load opens that path again.
		state := fmt.Sprintf(`{"mem_size_mib":%d,"track_dirty_pages":%v,"drive":%q}`, f.memMiB, f.trackDirty, f.drive)
		if err := os.WriteFile(str("snapshot_path"), []byte(state), 0o644); err != nil {
			return 400, err.Error(), nil
		}
	case "loadSnapshot":
		if f.configured || started || f.loaded {
			return 400, "Loading a microVM snapshot not allowed after configuring boot-specific resources.", nil
		}
		_, hasFile := m["mem_file_path"]
		_, hasBackend := m["mem_backend"]
		if hasFile == hasBackend {
			return 400, "Exactly one of mem_file_path and mem_backend must be given.", nil
		}
		st, err := os.ReadFile(str("snapshot_path"))
		if err != nil {
			return 400, "Cannot open snapshot file: " + err.Error(), nil
		}
		var saved struct {
			MemSizeMiB int    `json:"mem_size_mib"`
			Dirty      bool   `json:"track_dirty_pages"`
			Drive      string `json:"drive"`
		}
		if err := json.Unmarshal(st, &saved); err != nil {
			return 400, "Cannot deserialize the microVM state: " + err.Error(), nil
		}
		if saved.Drive != "" {
			// Opened relative to the process's working directory, as
			// Firecracker does; the journal records which file that was.
			real, err := filepath.EvalSymlinks(saved.Drive)
			if err != nil {
				return 400, "Unable to restore the block device: " + err.Error(), nil
			}
			f.drive = real
		}
		f.memMiB = saved.MemSizeMiB
		if hasBackend {
			be := m["mem_backend"].(map[string]any)
			if be["backend_type"] == "Uffd" {
				if err := f.connectUFFD(be["backend_path"].(string)); err != nil {
					return 400, "Failed to connect to the UFFD handler: " + err.Error(), nil
				}
			}
		}
		f.loaded = true
		f.state = paused
		if r, _ := m["resume_vm"].(bool); r {
			f.state = running
		}
	}
	return http.StatusNoContent, "", nil
}

// connectUFFD does what Firecracker does on a Uffd restore: maps guest
// memory, registers it, sends the handshake; then it reads the first page
// back through the page server and checks it against the memory file.
func (f *fake) connectUFFD(socket string) error {
	const size = fakeMemSize
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return err
	}
	fd, err := uffd.Register(uffd.Addr(mem), size, uffd.FeatureEventRemove)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return err
	}
	f.uffdConn = conn
	if err := uffd.SendHandshake(conn, []uffd.Region{{BaseHostVirtAddr: uffd.Addr(mem), Size: size, PageSize: 4096}}, fd); err != nil {
		return err
	}
	if want := pageMark(1<<20, f.memMiB); !bytes.HasPrefix(mem[1<<20:], []byte(want)) {
		return fmt.Errorf("guest memory at 1 MiB reads %q, want %q", mem[1<<20:1<<20+len(want)], want)
	}
	if status := os.Getenv(touchEnv); status != "" {
		go touchAll(mem, f.memMiB, status)
	}
	return nil
}

// The fake's guest memory: fakeMemSize bytes of fakePage pages, each
// starting with its pageMark.
const (
	fakeMemSize = 4 << 20
	fakePage    = 4096
)

func pageMark(off, memMiB int) string { return fmt.Sprintf("page at %#x of %d MiB", off, memMiB) }

// touchEnv names the file a restored fake reports to as it reads its
// guest memory page by page, slowly (the guest running on), each read a
// fault the page server serves: "progress N" as it goes, then "ok N" or
// "bad ..." at the first page that reads wrong.
const touchEnv = "EMBER_TEST_FAKE_TOUCH"

func touchAll(mem []byte, memMiB int, status string) {
	report := func(s string) { os.WriteFile(status+".tmp", []byte(s), 0o644); os.Rename(status+".tmp", status) }
	for off := 0; off < len(mem); off += fakePage {
		if want := pageMark(off, memMiB); !bytes.HasPrefix(mem[off:], []byte(want)) {
			report(fmt.Sprintf("bad page %#x: %q, want %q", off, mem[off:off+len(want)], want))
			return
		}
		if n := off/fakePage + 1; n%32 == 0 {
			report(fmt.Sprintf("progress %d", n))
		}
		time.Sleep(3 * time.Millisecond)
	}
	report(fmt.Sprintf("ok %d", len(mem)/fakePage))
}

// runFake is the fake firecracker's main: it serves until SendCtrlAltDel
// or a signal ends the process.
func runFake(args []string) int {
	v, err := loadValidator(os.Getenv(specEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 2
	}
	return serveFake(v, args, os.Getenv(journalEnv))
}

// serveFake serves the fake API on the socket named by --api-sock.
func serveFake(v *validator, args []string, journal string) int {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	sock := fs.String("api-sock", "", "")
	fs.String("id", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	l, err := net.Listen("unix", *sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 2
	}
	srv := &http.Server{}
	f := &fake{v: v, journal: journal}
	f.stop = func() { l.Close(); os.Remove(*sock) }
	srv.Handler = f
	fmt.Println("fake firecracker serving on", *sock)
	if err := srv.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 1
	}
	return 0
}

// runFakeJailer plays the jailer: it checks its arguments, chroots into
// <chroot-base>/firecracker/<id>/root, drops to the given uid and gid, and
// serves the fake API there on the socket Firecracker would open. (The
// real jailer execs firecracker at this point; the test binary cannot be
// exec'd inside an empty chroot, so it serves in place.)
func runFakeJailer(args []string) int {
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	id := fs.String("id", "", "")
	execFile := fs.String("exec-file", "", "")
	uid := fs.Int("uid", -1, "")
	gid := fs.Int("gid", -1, "")
	base := fs.String("chroot-base-dir", "", "")
	cgv := fs.String("cgroup-version", "", "")
	fs.String("netns", "", "")
	var cgroups []string
	fs.Func("cgroup", "", func(s string) error {
		if !strings.Contains(s, "=") {
			return fmt.Errorf("cgroup %q: want file=value", s)
		}
		cgroups = append(cgroups, s)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *id == "" || *uid < 0 || *gid < 0 || *base == "" || *cgv != "2" {
		fmt.Fprintln(os.Stderr, "fake jailer: missing or bad arguments:", args)
		return 2
	}
	fmt.Println("fake jailer cgroups:", cgroups)
	v, err := loadValidator(os.Getenv(specEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake jailer:", err)
		return 2
	}
	root := filepath.Join(*base, filepath.Base(*execFile), *id, "root")
	fcArgs := fs.Args()
	if err := unix.Chroot(root); err != nil {
		fmt.Fprintln(os.Stderr, "fake jailer: chroot:", err)
		return 2
	}
	if err := unix.Chdir("/"); err != nil {
		return 2
	}
	// Threads share credentials in Go (setgroups/setgid/setuid are
	// process-wide since Go 1.16).
	if err := unix.Setgroups(nil); err != nil {
		return 2
	}
	if err := unix.Setgid(*gid); err != nil {
		return 2
	}
	if err := unix.Setuid(*uid); err != nil {
		return 2
	}
	return serveFake(v, fcArgs, "")
}

func TestMain(m *testing.M) {
	// A page server process, started from the test binary as the daemon
	// starts one from ember's.
	if len(os.Args) > 1 && os.Args[1] == uffd.HelperCommand {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		err := uffd.RunHelper(ctx, os.Args[2:], slog.New(slog.NewTextHandler(os.Stderr, nil)))
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "page server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if v := os.Getenv(daemonEnv); v != "" {
		os.Exit(runDaemon(v))
	}
	switch os.Getenv(fakeEnv) {
	case "1":
		os.Exit(runFake(os.Args[1:]))
	case "jailer":
		os.Exit(runFakeJailer(os.Args[1:]))
	}
	os.Exit(m.Run())
}
