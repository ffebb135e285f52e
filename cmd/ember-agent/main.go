// Command ember-agent runs inside every ember sandbox, started by init, and
// serves E2B's envd protocol (health, /init, /files, the process and
// filesystem services) so the daemon and the E2B SDKs can run commands,
// terminals and file operations in the guest. It is built as a
// static binary (CGO_ENABLED=0).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/agent/proto"
	"github.com/emberhq/ember/internal/agent/server"
	"github.com/emberhq/ember/internal/rootfs/growfs"
)

func main() {
	listen := flag.String("listen", fmt.Sprintf("0.0.0.0:%d", agent.Port), "TCP address to serve on")
	dir := flag.String("dir", "", "working directory of processes that name none (default: the requesting user's home)")
	debug := flag.Bool("debug", false, "log every process start and end")
	// Started by init (parent pid 1), as in every guest, it owns the
	// machine's root filesystem; started any other way, it must not touch
	// the host's.
	growRoot := flag.Bool("grow-root", os.Getppid() == 1, "grow the root ext4 filesystem to fill its disk before serving (default: when started by init)")
	flag.Parse()

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *growRoot {
		// A sandbox created with a disk larger than its template's image
		// has a larger device than filesystem: grow it before serving, so
		// the first command already sees the space.
		begin := time.Now()
		if from, to, err := growfs.Ext4("/"); err != nil {
			log.Warn("root filesystem not grown", "err", err)
		} else if to > from {
			log.Info("root filesystem grown", "from", from, "to", to, "duration", time.Since(begin))
		}
	}
	if err := run(log, *listen, *dir); err != nil {
		log.Error("ember-agent stopped", "err", err)
		os.Exit(1)
	}
}

// run serves until SIGTERM or SIGINT, then shuts down.
func run(log *slog.Logger, listen, dir string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "envd_version", proto.EnvdVersion)
	return server.New(server.Config{Logger: log, Dir: dir}).Serve(ctx, ln)
}
