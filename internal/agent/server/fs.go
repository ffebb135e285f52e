package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	contract "github.com/emberhq/ember/internal/agent/proto"
	pb "github.com/emberhq/ember/internal/agent/proto/filesystem"
	"github.com/emberhq/ember/internal/agent/proto/filesystem/filesystemconnect"
)

// failure is a classified error: the reason, the Connect code and the HTTP
// status it is answered with.
type failure struct {
	reason string
	code   connect.Code
	status int
	err    error
}

// classify sorts an error from a file operation by what the client can do
// about it.
func classify(err error) failure {
	f := func(reason string, code connect.Code, status int) failure {
		return failure{reason: reason, code: code, status: status, err: err}
	}
	switch {
	case errors.Is(err, errUnknownUser):
		return f(contract.ReasonUnknownUser, connect.CodeInvalidArgument, 400)
	case errors.Is(err, errInvalid):
		return f(contract.ReasonInvalid, connect.CodeInvalidArgument, 400)
	case errors.Is(err, fs.ErrNotExist):
		return f(contract.ReasonNotFound, connect.CodeNotFound, 404)
	case errors.Is(err, syscall.EISDIR):
		return f(contract.ReasonIsDirectory, connect.CodeInvalidArgument, 400)
	case errors.Is(err, syscall.ENOTDIR):
		return f(contract.ReasonNotDirectory, connect.CodeInvalidArgument, 400)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return f(contract.ReasonPermission, connect.CodePermissionDenied, 403)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return f(contract.ReasonNoSpace, connect.CodeResourceExhausted, 507)
	case errors.Is(err, fs.ErrExist), errors.Is(err, syscall.ENOTEMPTY):
		return f(contract.ReasonExists, connect.CodeAlreadyExists, 409)
	case errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ELOOP):
		return f(contract.ReasonInvalid, connect.CodeInvalidArgument, 400)
	}
	return f("internal", connect.CodeInternal, 500)
}

// errInvalid says a request is malformed: a path that cannot name a file,
// a terminal of no size, a command not found. It wins over whatever it
// wraps.
var errInvalid = errors.New("invalid request")

// rpcError is classify's answer as a Connect error.
func rpcError(err error) error {
	f := classify(err)
	ce := connect.NewError(f.code, err)
	ce.Meta().Set(contract.ReasonHeader, f.reason)
	return ce
}

// fsService implements filesystem.Filesystem. Every operation runs with the
// requesting user's file system identity (account.as), so the kernel checks
// their permissions and new files are theirs.
type fsService struct {
	filesystemconnect.UnimplementedFilesystemHandler
	s *Server
}

// target resolves the request's user and a path for them.
func (fsv *fsService) target(h http.Header, p string) (*account, string, error) {
	acct, err := fsv.s.account(userFromHeader(h))
	if err != nil {
		return nil, "", err
	}
	abs, err := acct.resolve(p)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", errInvalid, err)
	}
	return acct, abs, nil
}

// Stat describes one entry; a symbolic link is described, not followed.
func (fsv *fsService) Stat(_ context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	acct, p, err := fsv.target(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, rpcError(err)
	}
	var e *pb.EntryInfo
	if err := acct.as(func() (err error) { e, err = entryInfo(p); return err }); err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&pb.StatResponse{Entry: e}), nil
}

// MakeDir creates a directory and its missing parents; one that exists
// already is AlreadyExists (the SDK answers false), a file in its place an
// invalid argument.
func (fsv *fsService) MakeDir(_ context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	acct, p, err := fsv.target(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, rpcError(err)
	}
	var e *pb.EntryInfo
	err = acct.as(func() error {
		if fi, err := os.Stat(p); err == nil {
			if fi.IsDir() {
				return fmt.Errorf("make directory %q: %w", p, fs.ErrExist)
			}
			return fmt.Errorf("make directory %q: a file is in its place: %w", p, syscall.ENOTDIR)
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("make directory %q: %w", p, err)
		}
		e, err = entryInfo(p)
		return err
	})
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: e}), nil
}

// Move renames an entry, creating the destination's missing parents.
func (fsv *fsService) Move(_ context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	acct, src, err := fsv.target(req.Header(), req.Msg.GetSource())
	if err != nil {
		return nil, rpcError(err)
	}
	dst, err := acct.resolve(req.Msg.GetDestination())
	if err != nil {
		return nil, rpcError(fmt.Errorf("%w: %w", errInvalid, err))
	}
	var e *pb.EntryInfo
	err = acct.as(func() error {
		if _, err := os.Lstat(src); err != nil {
			return fmt.Errorf("move %q: %w", src, err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("move %q to %q: %w", src, dst, err)
		}
		if err := os.Rename(src, dst); err != nil {
			return fmt.Errorf("move %q to %q: %w", src, dst, err)
		}
		e, err = entryInfo(dst)
		return err
	})
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&pb.MoveResponse{Entry: e}), nil
}

// ListDir lists a directory (following a symbolic link to one) to the
// given depth: 1, the default, is its entries; 2 adds theirs, and so on.
func (fsv *fsService) ListDir(_ context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	acct, p, err := fsv.target(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, rpcError(err)
	}
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	var entries []*pb.EntryInfo
	err = acct.as(func() (err error) { entries, err = listDir(p, depth); return err })
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&pb.ListDirResponse{Entries: entries}), nil
}

// listDir walks dir to depth, not following links below it.
func listDir(dir string, depth int) ([]*pb.EntryInfo, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", dir, err)
	}
	if fi, err := os.Stat(real); err != nil {
		return nil, fmt.Errorf("list %q: %w", dir, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("list %q: %w", dir, syscall.ENOTDIR)
	}
	var out []*pb.EntryInfo
	err = filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == real {
				return err
			}
			return nil // an unreadable subdirectory is listed, not entered
		}
		if p == real {
			return nil
		}
		rel, _ := filepath.Rel(real, p)
		level := strings.Count(rel, string(filepath.Separator)) + 1
		if level > depth {
			return filepath.SkipDir
		}
		e, err := entryInfo(p)
		if err != nil {
			return nil // gone since the directory was read
		}
		e.Path = filepath.Join(dir, rel)
		out = append(out, e)
		if d.IsDir() && level == depth {
			return filepath.SkipDir
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", dir, err)
	}
	return out, nil
}

// Remove deletes a file, or a directory with everything in it.
func (fsv *fsService) Remove(_ context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	acct, p, err := fsv.target(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, rpcError(err)
	}
	if p == "/" {
		return nil, rpcError(fmt.Errorf("remove %q: %w: refusing to remove the root", p, errInvalid))
	}
	err = acct.as(func() error {
		if _, err := os.Lstat(p); err != nil {
			return fmt.Errorf("remove %q: %w", p, err)
		}
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %q: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}

// entryInfo describes p as envd does: a symbolic link is a link (with its
// target), owners are names where the guest knows them.
func entryInfo(p string) (*pb.EntryInfo, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, fmt.Errorf("stat %q: %w", p, err)
	}
	e := &pb.EntryInfo{
		Name:         filepath.Base(p),
		Path:         p,
		Size:         fi.Size(),
		Mode:         uint32(fi.Mode().Perm()),
		Permissions:  fi.Mode().String(),
		ModifiedTime: timestamppb.New(fi.ModTime()),
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type = pb.FileType_FILE_TYPE_SYMLINK
		if target, err := os.Readlink(p); err == nil {
			e.SymlinkTarget = &target
		}
	case fi.IsDir():
		e.Type = pb.FileType_FILE_TYPE_DIRECTORY
	case fi.Mode().IsRegular():
		e.Type = pb.FileType_FILE_TYPE_FILE
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Owner, e.Group = ownerName(st.Uid), groupName(st.Gid)
	}
	if fi.Mode().IsRegular() {
		e.Metadata = metadata(p)
	}
	return e, nil
}

func ownerName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return id
}

func groupName(gid uint32) string {
	id := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name
	}
	return id
}
