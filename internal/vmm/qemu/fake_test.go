package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeQMP is a QMP server for tests. It greets, insists on negotiation,
// tracks a run state through stop/cont and can interleave noise (events and
// replies to other requests) before every reply.
type fakeQMP struct {
	// noise sends two events and a reply with a foreign id before each
	// reply; silent never replies to anything but the negotiation.
	noise, silent bool
	// onQuit runs after quit is answered.
	onQuit func()
	// hangAfterStatus turns silent once a query-status is answered: a QEMU
	// that started and then hung.
	hangAfterStatus bool

	mu     sync.Mutex
	status string
	seen   []string
}

func newFakeQMP() *fakeQMP { return &fakeQMP{status: "running"} }

// listen serves QMP on a Unix socket at path until the listener closes.
// Like QEMU it serves one client at a time.
func (f *fakeQMP) listen(path string) (net.Listener, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	f.accept(l)
	return l, nil
}

// accept serves QMP on l, one client at a time, until l closes.
func (f *fakeQMP) accept(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.serve(c)
		}
	}()
}

func (f *fakeQMP) isSilent() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.silent
}

func (f *fakeQMP) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

func (f *fakeQMP) serve(c net.Conn) {
	defer c.Close()
	enc, dec := json.NewEncoder(c), json.NewDecoder(c)
	enc.Encode(map[string]any{"QMP": map[string]any{
		"version":      map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 0}},
		"capabilities": []string{"oob"},
	}})
	negotiated := false
	for {
		var req struct {
			Execute string          `json:"execute"`
			ID      json.RawMessage `json:"id"`
		}
		if err := dec.Decode(&req); err != nil {
			return
		}
		f.mu.Lock()
		f.seen = append(f.seen, req.Execute)
		f.mu.Unlock()
		if f.isSilent() && negotiated {
			continue
		}
		if f.noise {
			enc.Encode(map[string]any{"event": "RTC_CHANGE", "data": map[string]int{"offset": 1}})
			enc.Encode(map[string]any{"return": map[string]string{"status": "bogus"}, "id": "someone-else"})
			enc.Encode(map[string]any{"event": "NIC_RX_FILTER_CHANGED"})
		}
		ret, qerr := f.reply(req.Execute, negotiated)
		msg := map[string]any{"id": req.ID}
		if qerr != nil {
			msg["error"] = qerr
		} else {
			msg["return"] = ret
		}
		enc.Encode(msg)
		switch {
		case req.Execute == "qmp_capabilities":
			negotiated = true
		case req.Execute == "quit" && f.onQuit != nil:
			f.onQuit()
		case req.Execute == "query-status" && f.hangAfterStatus:
			f.mu.Lock()
			f.silent = true
			f.mu.Unlock()
		}
	}
}

func (f *fakeQMP) reply(cmd string, negotiated bool) (any, *QMPError) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !negotiated && cmd != "qmp_capabilities" {
		return nil, &QMPError{"CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"}
	}
	switch cmd {
	case "qmp_capabilities", "quit":
	case "query-status":
		return map[string]any{"status": f.status, "running": f.status == "running"}, nil
	case "stop":
		f.status = "paused"
	case "cont":
		f.status = "running"
	default:
		return nil, &QMPError{"CommandNotFound", fmt.Sprintf("The command %s has not been found", cmd)}
	}
	return map[string]any{}, nil
}

// fakeQEMUEnv names the environment variable that turns the test binary
// into a fake QEMU; its value is the mode.
const fakeQEMUEnv = "EMBER_TEST_FAKE_QEMU"

// Fake QEMU modes: how the process reacts to QMP quit and SIGTERM, or that
// it fails at once like QEMU with a bad kernel.
const (
	fakeObedient  = "obedient"    // exits on quit
	fakeIgnQuit   = "ignore-quit" // answers quit, keeps running, dies on SIGTERM
	fakeStubborn  = "stubborn"    // ignores quit and SIGTERM
	fakeFailStart = "fail"        // writes an error and exits 1
	fakeHangs     = "hangs"       // answers QMP until started, then never again
	// fakeStubbornGroup is fakeStubborn that first starts a child in its
	// process group, which ignores SIGTERM too, and writes the child's pid
	// to the file fakeChildEnv names.
	fakeStubbornGroup = "stubborn-group"
)

// fakeChildEnv names the file a fakeStubbornGroup QEMU writes its child's
// pid to.
const fakeChildEnv = "EMBER_TEST_FAKE_QEMU_CHILD"

func TestMain(m *testing.M) {
	// A restore's memory copy, started from the test binary as the
	// daemon starts one from ember's.
	if len(os.Args) > 2 && os.Args[1] == CopyCommand {
		if err := RunCopy(context.Background(), os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if mode := os.Getenv(fakeQEMUEnv); mode != "" {
		os.Exit(fakeQEMUMain(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeQEMUMain serves QMP on the socket named by a QEMU-style command line.
func fakeQEMUMain(mode string, args []string) int {
	if mode == fakeFailStart {
		fmt.Fprintln(os.Stderr, "qemu-system-x86_64: fake: could not load kernel")
		return 1
	}
	if mode == fakeStubborn || mode == fakeStubbornGroup {
		signal.Ignore(syscall.SIGTERM)
	}
	if mode == fakeStubbornGroup {
		// An ignored signal stays ignored across exec.
		child := exec.Command("sh", "-c", "trap '' TERM; exec sleep 600")
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "fake qemu:", err)
			return 1
		}
		if err := os.WriteFile(os.Getenv(fakeChildEnv), []byte(strconv.Itoa(child.Process.Pid)), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "fake qemu:", err)
			return 1
		}
	}
	// Like QEMU, serve QMP on the listening socket the daemon handed over
	// (or, started as an older ember did, on a socket of its own).
	sock, path := -1, ""
	for i, a := range args {
		if a == "-chardev" && i+1 < len(args) && strings.HasPrefix(args[i+1], "socket,") {
			for _, kv := range strings.Split(args[i+1], ",") {
				if p, ok := strings.CutPrefix(kv, "fd="); ok {
					sock, _ = strconv.Atoi(p)
				}
				if p, ok := strings.CutPrefix(kv, "path="); ok {
					path = p
				}
			}
		}
	}
	f := newFakeQMP()
	if mode == fakeObedient {
		f.onQuit = func() { os.Exit(0) }
	}
	f.hangAfterStatus = mode == fakeHangs
	if path != "" {
		if _, err := f.listen(path); err != nil {
			fmt.Fprintln(os.Stderr, "fake qemu:", err)
			return 1
		}
	} else {
		l, err := net.FileListener(os.NewFile(uintptr(sock), "qmp"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake qemu:", err)
			return 1
		}
		f.accept(l)
	}
	for {
		time.Sleep(time.Hour)
	}
}
