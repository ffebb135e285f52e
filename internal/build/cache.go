package build

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// cacheVersion changes whenever what a step produces changes for the same
// inputs (how steps run, the guest layer), so old entries stop matching.
const cacheVersion = "1"

// state is what the steps so far have set besides the disk: it rides
// along each cache entry, so a rebuild that reuses a prefix knows it.
type state struct {
	Env     []KeyValue `json:"env,omitempty"`
	Workdir string     `json:"workdir,omitempty"`
	User    string     `json:"user,omitempty"`
	Start   string     `json:"start,omitempty"`
	Ready   string     `json:"ready,omitempty"`
}

// envMap is the state's environment as a map.
func (s state) envMap() map[string]string {
	if len(s.Env) == 0 {
		return nil
	}
	m := make(map[string]string, len(s.Env))
	for _, kv := range s.Env {
		m[kv.Key] = kv.Value
	}
	return m
}

// setEnv sets one variable, keeping the order of first definition.
func (s *state) setEnv(k, v string) {
	for i := range s.Env {
		if s.Env[i].Key == k {
			s.Env[i].Value = v
			return
		}
	}
	s.Env = append(s.Env, KeyValue{k, v})
}

// after is the state once step has run.
func (s state) after(st Step) state {
	s.Env = append([]KeyValue(nil), s.Env...)
	switch st.Kind {
	case Env:
		for _, kv := range st.Env {
			s.setEnv(kv.Key, kv.Value)
		}
	case Workdir:
		s.Workdir = st.Path
	case User:
		s.User = st.Path
	case Start:
		s.Start = st.Command
	case Ready:
		s.Ready = st.Command
	}
	return s
}

// changesDisk says whether a step writes the image (and so runs in the
// build sandbox); the others change only the state, and their cache
// entry shares their parent's image.
func changesDisk(k Kind) bool { return k == Run || k == Copy || k == Workdir }

// baseKey names a build's first image: what it was made from (a digest, a
// template's key, the built-in Debian's key), the guest layer ember adds
// and the disk's size.
func baseKey(identity, guest string, diskMiB int) string {
	h := sha256.New()
	fmt.Fprintf(h, "ember build %s\nbase %s\nguest %s\ndisk %d\n", cacheVersion, identity, guest, diskMiB)
	return hex.EncodeToString(h.Sum(nil))
}

// stepKey names a step's result: its parent's key and the step itself
// (what it does, not where it was written), and for a COPY the digest of
// the files it copies.
func stepKey(parent string, st Step, copyDigest string) string {
	canon, _ := json.Marshal(struct {
		Kind    Kind       `json:"kind"`
		Command string     `json:"command,omitempty"`
		Env     []KeyValue `json:"env,omitempty"`
		Path    string     `json:"path,omitempty"`
		Sources []string   `json:"sources,omitempty"`
		Chown   string     `json:"chown,omitempty"`
		Mode    uint32     `json:"mode,omitempty"`
		Files   string     `json:"files,omitempty"`
		User    string     `json:"user,omitempty"`
	}{st.Kind, st.Command, st.Env, st.Path, st.Sources, st.Chown, st.Mode, copyDigest, st.User})
	h := sha256.New()
	fmt.Fprintf(h, "ember step %s\nparent %s\n%s\n", cacheVersion, parent, canon)
	return hex.EncodeToString(h.Sum(nil))
}

// sha is the hex SHA-256 of b.
func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
