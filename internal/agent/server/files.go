package server

import (
	"compress/gzip"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	contract "github.com/emberhq/ember/internal/agent/proto"
)

// Signing operations, as E2B's signed URLs name them.
const (
	signRead  = "read"
	signWrite = "write"
)

// errSignature says a /files request carried neither the access token nor
// a valid, unexpired signature.
var errSignature = errors.New("bad signature")

// Signature returns the signature of a /files URL as E2B's SDKs compute it:
// "v1_" and the unpadded standard base64 of the SHA-256 of
// "<path>:<read|write>:<user>:<token>[:<expiry unix seconds>]" (e2b
// package, src/sandbox/signature.ts). A zero expiry means none.
func Signature(path, operation, user, token string, expiry int64) string {
	s := strings.Join([]string{path, operation, user, token}, ":")
	if expiry != 0 {
		s += ":" + strconv.FormatInt(expiry, 10)
	}
	sum := sha256.Sum256([]byte(s))
	return "v1_" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// checkSigned admits a /files request that carries the access token, or a
// signature of its path, operation and user made with it (and, when it has
// one, an expiry still ahead). Without a token set, everything is admitted.
func (s *Server) checkSigned(r *http.Request, operation string) error {
	token, _ := s.defaults()
	if token == "" {
		return nil
	}
	if h := r.Header.Get(TokenHeader); h != "" {
		if subtle.ConstantTimeCompare([]byte(h), []byte(token)) != 1 {
			return fmt.Errorf("%w: the access token does not match", errSignature)
		}
		return nil
	}
	q := r.URL.Query()
	sig := q.Get("signature")
	if sig == "" {
		return fmt.Errorf("%w: missing signature query parameter", errSignature)
	}
	var expiry int64
	if e := q.Get("signature_expiration"); e != "" {
		var err error
		if expiry, err = strconv.ParseInt(e, 10, 64); err != nil {
			return fmt.Errorf("%w: signature_expiration %q is not a number", errSignature, e)
		}
	}
	want := Signature(q.Get("path"), operation, q.Get("username"), token, expiry)
	if subtle.ConstantTimeCompare([]byte(sig), []byte(want)) != 1 {
		return fmt.Errorf("%w: invalid signature", errSignature)
	}
	if q.Has("signature_expiration") && expiry < time.Now().Unix() {
		return fmt.Errorf("%w: signature is already expired", errSignature)
	}
	return nil
}

// failFiles answers a /files request with envd's JSON error and the reason.
func (s *Server) failFiles(w http.ResponseWriter, r *http.Request, err error) {
	f := classify(err)
	if errors.Is(err, errSignature) {
		f.status, f.reason = http.StatusUnauthorized, contract.ReasonSignature
	}
	if f.status == http.StatusInternalServerError {
		s.log.Warn("files request failed", "method", r.Method, "path", r.URL.Query().Get("path"), "err", err)
	}
	w.Header().Set(contract.ReasonHeader, f.reason)
	writeError(w, f.status, err.Error())
}

// filesUser checks a /files request's token or signature for the
// operation and resolves its user; it answers the request itself when
// either fails.
func (s *Server) filesUser(w http.ResponseWriter, r *http.Request, operation string) (*account, bool) {
	if err := s.checkSigned(r, operation); err != nil {
		s.failFiles(w, r, err)
		return nil, false
	}
	acct, err := s.account(requestUser(r))
	if err != nil {
		s.failFiles(w, r, err)
		return nil, false
	}
	return acct, true
}

// download streams a file (GET /files?path=): ranges and conditional
// requests are answered; gzip when the client accepts it.
func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	acct, ok := s.filesUser(w, r, signRead)
	if !ok {
		return
	}
	p, err := acct.resolve(r.URL.Query().Get("path"))
	if err != nil {
		s.failFiles(w, r, fmt.Errorf("%w: %w", errInvalid, err))
		return
	}
	var f *os.File
	err = acct.as(func() (err error) {
		if f, err = os.Open(p); err != nil {
			return fmt.Errorf("read %q: %w", p, err)
		}
		return nil
	})
	if err != nil {
		s.failFiles(w, r, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		s.failFiles(w, r, fmt.Errorf("read %q: %w", p, err))
		return
	}
	if fi.IsDir() {
		s.failFiles(w, r, fmt.Errorf("read %q: %w", p, syscall.EISDIR))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": filepath.Base(p)}))
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		if _, err := io.Copy(zw, f); err != nil {
			s.log.Debug("download ended early", "path", p, "err", err)
			return
		}
		_ = zw.Close()
		return
	}
	http.ServeContent(w, r, filepath.Base(p), fi.ModTime(), f)
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip (named,
// with a non-zero quality).
func acceptsGzip(h string) bool {
	for _, part := range strings.Split(h, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		if q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q="); ok {
			v, err := strconv.ParseFloat(q, 64)
			return err == nil && v > 0
		}
		return true
	}
	return false
}

// metadataHeader prefixes the request headers that attach metadata to
// uploaded files (E2B's SDKs send X-Metadata-<key>, envd 0.6.2 on).
const metadataHeader = "X-Metadata-"

// metadataXattr prefixes the extended attributes metadata is kept in, as
// envd keeps it: key k is user.e2b.k.
const metadataXattr = "user.e2b."

// uploadMetadata collects the metadata headers of an upload, keys
// lowercased (the first value of a repeated header wins).
func uploadMetadata(h http.Header) (map[string]string, error) {
	var md map[string]string
	for name, values := range h {
		key, ok := strings.CutPrefix(name, metadataHeader)
		if !ok || len(values) == 0 {
			continue
		}
		key = strings.ToLower(key)
		if key == "" {
			continue
		}
		if len(metadataXattr)+len(key) > 255 || len(values[0]) > 64<<10 {
			return nil, fmt.Errorf("%w: metadata %q: keys up to %d bytes, values up to 64 KiB", errInvalid, key, 255-len(metadataXattr))
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = values[0]
	}
	return md, nil
}

// uploaded is one element of POST /files's answer.
type uploaded struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// upload writes files (POST /files): a raw application/octet-stream body to
// ?path=, or every "file" part of a multipart body to ?path= or, without
// it, to the part's file name; gzip content encoding is undone first. Each
// file is written under a temporary name and renamed into place, so a
// failed or cut-off upload leaves the destination as it was.
func (s *Server) upload(w http.ResponseWriter, r *http.Request) {
	acct, ok := s.filesUser(w, r, signWrite)
	if !ok {
		return
	}
	body := io.Reader(r.Body)
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			s.failFiles(w, r, fmt.Errorf("%w: gzip body: %w", errInvalid, err))
			return
		}
		defer zr.Close()
		body = zr
	default:
		s.failFiles(w, r, fmt.Errorf("%w: unsupported content encoding %q (want gzip or none)", errInvalid, enc))
		return
	}
	md, err := uploadMetadata(r.Header)
	if err != nil {
		s.failFiles(w, r, err)
		return
	}
	query := r.URL.Query().Get("path")
	media, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var done []uploaded
	switch {
	case media == "application/octet-stream":
		if query == "" {
			s.failFiles(w, r, fmt.Errorf("%w: the path query parameter is required for a raw upload", errInvalid))
			return
		}
		p, err := acct.resolve(query)
		if err == nil {
			err = writeFile(acct, p, body, md)
		}
		if err != nil {
			s.failFiles(w, r, err)
			return
		}
		done = append(done, uploaded{Path: p, Name: filepath.Base(p), Type: "file"})
	case strings.HasPrefix(media, "multipart/"):
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextRawPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				s.failFiles(w, r, fmt.Errorf("%w: read multipart body: %w", errInvalid, err))
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			dest := query
			if dest == "" {
				// The part's whole file name: FileName() keeps only its
				// last element, and the SDKs send the destination path.
				_, dp, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
				dest = dp["filename"]
			}
			p, err := acct.resolve(dest)
			if err != nil {
				part.Close()
				s.failFiles(w, r, fmt.Errorf("%w: part %d: %w", errInvalid, len(done)+1, err))
				return
			}
			for _, u := range done {
				if u.Path == p {
					part.Close()
					s.failFiles(w, r, fmt.Errorf("%w: two parts are for %q; only the first was written", errInvalid, p))
					return
				}
			}
			err = writeFile(acct, p, part, md)
			part.Close()
			if err != nil {
				s.failFiles(w, r, err)
				return
			}
			done = append(done, uploaded{Path: p, Name: filepath.Base(p), Type: "file"})
		}
		if len(done) == 0 {
			s.failFiles(w, r, fmt.Errorf("%w: the multipart body has no part named \"file\"", errInvalid))
			return
		}
	default:
		s.failFiles(w, r, fmt.Errorf("%w: unsupported content type %q (want multipart/form-data or application/octet-stream)", errInvalid, r.Header.Get("Content-Type")))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(done)
}

// writeFile writes src to p as acct: missing parent directories are made
// (theirs), the data goes to a temporary file beside p, which then replaces
// p (keeping p's permission bits when it existed) with the metadata md as
// extended attributes. Any failure, a full disk included, removes the
// temporary file and leaves p untouched.
func writeFile(acct *account, p string, src io.Reader, md map[string]string) error {
	var tmp *os.File
	err := acct.as(func() error {
		dir := filepath.Dir(p)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return fmt.Errorf("write %q: %w", p, syscall.EISDIR)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("write %q: %w", p, err)
		}
		perm := os.FileMode(0o644)
		if fi, err := os.Stat(p); err == nil {
			perm = fi.Mode().Perm()
		}
		var err error
		if tmp, err = os.CreateTemp(dir, "."+filepath.Base(p)+".ember-*"); err != nil {
			return fmt.Errorf("write %q: %w", p, err)
		}
		if err := tmp.Chmod(perm); err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			return fmt.Errorf("write %q: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The file is open: copying needs no identity of its own.
	_, err = io.Copy(tmp, src)
	if err == nil {
		err = setMetadata(tmp, md)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = acct.as(func() error { return os.Rename(tmp.Name(), p) })
	}
	if err != nil {
		_ = acct.as(func() error { return os.Remove(tmp.Name()) })
		return fmt.Errorf("write %q: %w", p, err)
	}
	return nil
}
