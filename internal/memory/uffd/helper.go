//go:build linux

package uffd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
)

// HelperCommand is the ember subcommand that runs a page server as a
// process of its own (RunHelper): one per restored machine, in the
// machine's cgroup, so that the machine's memory is served whatever
// happens to the daemon, and a restarted daemon re-adopts both.
const HelperCommand = "uffd-serve"

// HelperArgs is the command line of a page server process for a machine
// whose VMM connects at socket: the daemon hands it the socket, listening,
// as descriptor listenFD. The socket path is also the process's identity
// (--socket PATH), by which a restarted daemon re-adopts it and start-up
// reclaim finds an orphan.
func HelperArgs(socket, memFile string, readahead, listenFD int) []string {
	return []string{HelperCommand, "--socket", socket, "--mem-file", memFile,
		"--readahead", fmt.Sprint(readahead), "--listen-fd", fmt.Sprint(listenFD)}
}

// RunHelper is a page server process's main: it serves the VMM that
// connects on the handed socket until the VMM goes away (nil) or ctx ends.
// args are what follows HelperCommand.
func RunHelper(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet(HelperCommand, flag.ContinueOnError)
	socket := fs.String("socket", "", "path the VMM connects to")
	memFile := fs.String("mem-file", "", "the snapshot's memory file")
	readahead := fs.Int("readahead", 0, "bytes one fault serves (0: the default)")
	listenFD := fs.Int("listen-fd", -1, "descriptor of the socket, listening")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *socket == "" || *memFile == "" || *listenFD < 3 {
		return errors.New("page server: --socket, --mem-file and --listen-fd (3 or more) are required")
	}
	fl, err := net.FileListener(os.NewFile(uintptr(*listenFD), "page server socket"))
	if err != nil {
		return fmt.Errorf("page server: handed socket: %w", err)
	}
	l, ok := fl.(*net.UnixListener)
	if !ok {
		return fmt.Errorf("page server: handed socket is %T, not a unix socket", fl)
	}
	s, err := New(Config{Socket: *socket, MemFile: *memFile, Readahead: *readahead, Listener: l}, log)
	if err != nil {
		return err
	}
	err = s.Serve(ctx)
	st := s.Stats()
	log.Info("page server done", "socket", *socket, "faults", st.Faults, "copied", st.CopiedBytes, "zeroed", st.ZeroedBytes, "err", err)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
