package server

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultUser is the account commands and file operations run as when a
// request names none and /init set no other, as in E2B's sandboxes.
const DefaultUser = "user"

// errUnknownUser says a request named a user the guest has no account for.
var errUnknownUser = errors.New("unknown user")

// account is a resolved guest user: what a process runs as and whose
// permissions a file operation is checked against.
type account struct {
	name     string
	uid, gid uint32
	groups   []uint32 // supplementary groups, from /etc/group
	home     string
}

// lookupAccount resolves a user name (or a numeric uid) through the
// guest's /etc/passwd and /etc/group.
func lookupAccount(name string) (*account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			if _, nerr := strconv.Atoi(name); nerr == nil {
				u, err = user.LookupId(name)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("look up user %q: %w: %w", name, errUnknownUser, err)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("user %q has a non-numeric uid or gid: %w", name, err)
	}
	a := &account{name: u.Username, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil && uint32(g) != a.gid {
				a.groups = append(a.groups, uint32(g))
			}
		}
	}
	if a.home == "" {
		a.home = "/"
	}
	return a, nil
}

// requestUser names the user a request asks for: E2B's SDKs send
// "Authorization: Basic base64(<user>:)" on RPCs and ?username= on /files.
// Empty means the default.
func requestUser(r *http.Request) string {
	if u := r.URL.Query().Get("username"); u != "" {
		return u
	}
	if u, _, ok := r.BasicAuth(); ok {
		return u
	}
	return ""
}

// userFromHeader is requestUser for Connect handlers, which see only the
// headers.
func userFromHeader(h http.Header) string {
	r := http.Request{Header: h}
	if u, _, ok := r.BasicAuth(); ok {
		return u
	}
	return ""
}

// account resolves the user a request names, or the default: the one /init
// set, else DefaultUser where the guest has that account, else the user the
// agent runs as (an agent started outside a guest, in tests).
func (s *Server) account(name string) (*account, error) {
	if name == "" {
		s.mu.RLock()
		name = s.defaultUser
		s.mu.RUnlock()
	}
	if name == "" {
		if a, err := lookupAccount(DefaultUser); err == nil {
			return a, nil
		}
		name = strconv.Itoa(os.Geteuid())
	}
	a, err := lookupAccount(name)
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 && a.uid != uint32(os.Geteuid()) {
		return nil, fmt.Errorf("act as user %q: %w: the agent does not run as root", name, os.ErrPermission)
	}
	return a, nil
}

// resolve makes a path absolute for a user: "~" and "~/x" are under the
// user's home, as are relative paths (E2B's rule).
func (a *account) resolve(p string) (string, error) {
	switch {
	case p == "":
		return "", errors.New("path is empty")
	case p == "~":
		p = a.home
	case strings.HasPrefix(p, "~/"):
		p = filepath.Join(a.home, p[2:])
	case strings.HasPrefix(p, "~"):
		return "", fmt.Errorf("path %q: another user's home (~name) is not supported", p)
	case !filepath.IsAbs(p):
		p = filepath.Join(a.home, p)
	}
	return filepath.Clean(p), nil
}

// env is what a process of this user gets before /init's variables and the
// request's own: HOME, USER and LOGNAME, as login would set them.
func (a *account) env() map[string]string {
	return map[string]string{"HOME": a.home, "USER": a.name, "LOGNAME": a.name}
}
