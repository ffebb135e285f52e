package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"connectrpc.com/connect"
	"github.com/fsnotify/fsnotify"

	pb "github.com/emberhq/ember/internal/agent/proto/filesystem"
)

// maxPolledEvents bounds the events a polling watcher keeps between two
// GetWatcherEvents; older ones are dropped first.
const maxPolledEvents = 4096

// watcher reports changes under one directory (and, when recursive, every
// directory below it, those created later included).
type watcher struct {
	root         string
	recursive    bool
	includeEntry bool
	fsw          *fsnotify.Watcher
	events       chan *pb.FilesystemEvent
	stop         chan struct{}
	stopOnce     sync.Once
	done         chan struct{}

	// mu guards polled, the events a polling watcher holds for its client.
	mu     sync.Mutex
	polled []*pb.FilesystemEvent
}

// newWatcher starts watching dir as acct. A missing directory is not
// found, a file an invalid argument.
func newWatcher(acct *account, dir string, recursive, includeEntry bool) (*watcher, error) {
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("create watcher: %w", err)
	}
	w := &watcher{root: dir, recursive: recursive, includeEntry: includeEntry, fsw: fsw,
		events: make(chan *pb.FilesystemEvent, 64), stop: make(chan struct{}), done: make(chan struct{})}
	err = acct.as(func() error {
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("watch %q: %w", dir, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("watch %q: %w", dir, syscall.ENOTDIR)
		}
		return w.add(dir)
	})
	if err != nil {
		fsw.Close()
		return nil, err
	}
	go w.run()
	return w, nil
}

// add watches dir and, when recursive, the directories below it.
func (w *watcher) add(dir string) error {
	if !w.recursive {
		if err := w.fsw.Add(dir); err != nil {
			return fmt.Errorf("watch %q: %w", dir, err)
		}
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return err
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		if err := w.fsw.Add(p); err != nil && p == dir {
			return fmt.Errorf("watch %q: %w", p, err)
		}
		return nil
	})
}

// run turns inotify events into envd's: one per kind of change, as envd
// sends them, named relative to the watched directory.
func (w *watcher) run() {
	defer close(w.done)
	defer close(w.events)
	for {
		select {
		case <-w.stop:
			return
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			_ = err // an overflow loses events; the watch goes on
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			if w.recursive && ev.Has(fsnotify.Create) {
				if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
					_ = w.add(ev.Name)
				}
			}
			rel, err := filepath.Rel(w.root, ev.Name)
			if err != nil {
				continue
			}
			for _, k := range []struct {
				op fsnotify.Op
				t  pb.EventType
			}{
				{fsnotify.Create, pb.EventType_EVENT_TYPE_CREATE},
				{fsnotify.Write, pb.EventType_EVENT_TYPE_WRITE},
				{fsnotify.Remove, pb.EventType_EVENT_TYPE_REMOVE},
				{fsnotify.Rename, pb.EventType_EVENT_TYPE_RENAME},
				{fsnotify.Chmod, pb.EventType_EVENT_TYPE_CHMOD},
			} {
				if !ev.Has(k.op) {
					continue
				}
				out := &pb.FilesystemEvent{Name: rel, Type: k.t}
				if w.includeEntry {
					if e, err := entryInfo(ev.Name); err == nil {
						out.Entry = e
					}
				}
				select {
				case w.events <- out:
				case <-w.stop:
					return
				}
			}
		}
	}
}

// close stops the watch; safe to call more than once.
func (w *watcher) close() {
	w.stopOnce.Do(func() {
		close(w.stop)
		w.fsw.Close()
	})
	<-w.done
}

// keep adds an event to the polling buffer, dropping the oldest past
// maxPolledEvents.
func (w *watcher) keep(ev *pb.FilesystemEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.polled = append(w.polled, ev)
	if len(w.polled) > maxPolledEvents {
		w.polled = w.polled[len(w.polled)-maxPolledEvents:]
	}
}

// takeLocked returns and clears the polling buffer; w.mu must be held.
func (w *watcher) takeLocked() []*pb.FilesystemEvent {
	out := w.polled
	w.polled = nil
	return out
}

// WatchDir streams changes under a directory: a start event once the
// watch is in place, then events as they happen, keepalives while idle.
func (fsv *fsService) WatchDir(ctx context.Context, req *connect.Request[pb.WatchDirRequest], stream *connect.ServerStream[pb.WatchDirResponse]) error {
	acct, p, err := fsv.target(req.Header(), req.Msg.GetPath())
	if err != nil {
		return rpcError(err)
	}
	w, err := newWatcher(acct, p, req.Msg.GetRecursive(), req.Msg.GetIncludeEntry())
	if err != nil {
		return rpcError(err)
	}
	defer w.close()
	send := func(r *pb.WatchDirResponse) error {
		if err := stream.Send(r); err != nil {
			return fmt.Errorf("send watch event for %q: %w", p, err)
		}
		return nil
	}
	if err := send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Start{Start: &pb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	tick, stop := keepAliveTicker(req.Header())
	defer stop()
	for {
		select {
		case ev, ok := <-w.events:
			if !ok {
				return connect.NewError(connect.CodeInternal, errors.New("watch ended"))
			}
			if err := send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Filesystem{Filesystem: ev}}); err != nil {
				return err
			}
		case <-tick:
			if err := send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Keepalive{Keepalive: &pb.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
		case <-ctx.Done():
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
}

// CreateWatcher starts a watch whose events the client collects with
// GetWatcherEvents until RemoveWatcher.
func (fsv *fsService) CreateWatcher(_ context.Context, req *connect.Request[pb.CreateWatcherRequest]) (*connect.Response[pb.CreateWatcherResponse], error) {
	acct, p, err := fsv.target(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, rpcError(err)
	}
	w, err := newWatcher(acct, p, req.Msg.GetRecursive(), req.Msg.GetIncludeEntry())
	if err != nil {
		return nil, rpcError(err)
	}
	id := rand.Text()
	fsv.s.watchMu.Lock()
	fsv.s.watchers[id] = w
	fsv.s.watchMu.Unlock()
	// Events are moved into the polling buffer as they come, so a slow
	// poller never stalls the inotify reader.
	go func() {
		for {
			select {
			case <-w.stop:
				return
			case ev, ok := <-w.events:
				if !ok {
					return
				}
				w.keep(ev)
			}
		}
	}()
	return connect.NewResponse(&pb.CreateWatcherResponse{WatcherId: id}), nil
}

// GetWatcherEvents returns the events seen since the last call.
func (fsv *fsService) GetWatcherEvents(_ context.Context, req *connect.Request[pb.GetWatcherEventsRequest]) (*connect.Response[pb.GetWatcherEventsResponse], error) {
	w, err := fsv.watcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	events := w.takeLocked()
	w.mu.Unlock()
	return connect.NewResponse(&pb.GetWatcherEventsResponse{Events: events}), nil
}

// RemoveWatcher ends a polling watch.
func (fsv *fsService) RemoveWatcher(_ context.Context, req *connect.Request[pb.RemoveWatcherRequest]) (*connect.Response[pb.RemoveWatcherResponse], error) {
	w, err := fsv.watcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	fsv.s.watchMu.Lock()
	delete(fsv.s.watchers, req.Msg.GetWatcherId())
	fsv.s.watchMu.Unlock()
	w.close()
	return connect.NewResponse(&pb.RemoveWatcherResponse{}), nil
}

func (fsv *fsService) watcher(id string) (*watcher, error) {
	fsv.s.watchMu.Lock()
	defer fsv.s.watchMu.Unlock()
	if w, ok := fsv.s.watchers[id]; ok {
		return w, nil
	}
	return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
}
