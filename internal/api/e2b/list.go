package e2b

import (
	"cmp"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
)

// nextTokenHeader carries the cursor of the next page of a list; absent
// on the last page.
const nextTokenHeader = "X-Next-Token"

// List page sizes: E2B's default and the most one page holds.
const (
	defaultLimit = 100
	maxLimit     = 1000
)

// listV2 is GET /v2/sandboxes: filtered by metadata, state (running and
// paused unless named), template and startedAfter, ordered by start time
// (order, newest first by default) and paginated by X-Next-Token.
func (f *Facade) listV2(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	meta, err := metadataFilter(q.Get("metadata"))
	if err != nil {
		f.fail(w, r, err)
		return
	}
	states := map[string]bool{"running": true, "paused": true}
	if v := q.Get("state"); v != "" {
		states = map[string]bool{}
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "running" && s != "paused" {
				f.fail(w, r, invalid("state: %q: want running or paused (comma-separated)", s))
				return
			}
			states[s] = true
		}
	}
	var after time.Time
	if v := q.Get("startedAfter"); v != "" {
		if after, err = time.Parse(time.RFC3339Nano, v); err != nil {
			f.fail(w, r, invalid("startedAfter: %q: want an RFC 3339 time", v))
			return
		}
	}
	desc := true
	switch q.Get("order") {
	case "", "desc":
	case "asc":
		desc = false
	default:
		f.fail(w, r, invalid("order: %q: want asc or desc", q.Get("order")))
		return
	}
	limit, err := pageLimit(q.Get("limit"))
	if err != nil {
		f.fail(w, r, err)
		return
	}
	tpl := q.Get("template")
	var recs []store.Sandbox
	for _, rec := range f.sbs.List() {
		st, ok := state(rec)
		if !ok || !states[st] || !matches(rec.Metadata, meta) || !rec.CreatedAt.After(after) {
			continue
		}
		if tpl != "" && templateID(rec) != tpl && rec.Template != f.cfg.Templates[tpl] {
			continue
		}
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, func(a, b store.Sandbox) int {
		if desc {
			return byStart(b, a)
		}
		return byStart(a, b)
	})
	key := func(rec store.Sandbox) string { return sortKey(rec.CreatedAt, rec.ID) }
	page, next, err := paginate(recs, key, q.Get("nextToken"), limit, desc)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	if next != "" {
		w.Header().Set(nextTokenHeader, next)
	}
	f.writeListed(w, page)
}

// listV1 is the 1.x SDKs' GET /sandboxes: the running sandboxes, filtered
// by metadata, unpaginated.
func (f *Facade) listV1(w http.ResponseWriter, r *http.Request) {
	meta, err := metadataFilter(r.URL.Query().Get("metadata"))
	if err != nil {
		f.fail(w, r, err)
		return
	}
	var recs []store.Sandbox
	for _, rec := range f.sbs.List() {
		if st, ok := state(rec); ok && st == "running" && matches(rec.Metadata, meta) {
			recs = append(recs, rec)
		}
	}
	slices.SortFunc(recs, byStart)
	f.writeListed(w, recs)
}

// sortKey orders by time, then name, as strings compare: the time in
// fixed-width nanoseconds.
func sortKey(t time.Time, name string) string { return fmt.Sprintf("%020d %s", t.UnixNano(), name) }

// byStart orders sandboxes oldest first.
func byStart(a, b store.Sandbox) int {
	return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
}

func (f *Facade) writeListed(w http.ResponseWriter, recs []store.Sandbox) {
	out := make([]ListedSandbox, 0, len(recs))
	for _, rec := range recs {
		st, _ := state(rec)
		tid := templateID(rec)
		out = append(out, ListedSandbox{
			SandboxID: rec.ID, TemplateID: tid, Alias: tid, ClientID: clientID,
			CPUCount: rec.VCPUs, MemoryMB: rec.MemoryMiB, DiskSizeMB: rec.DiskMiB, EnvdVersion: f.cfg.EnvdVersion,
			Metadata: nonNil(rec.Metadata), StartedAt: rfc3339(rec.CreatedAt), EndAt: rfc3339(rec.ExpiresAt),
			State: st, VolumeMounts: []VolumeMount{},
		})
	}
	writeJSON(w, http.StatusOK, out)
}

// metadataFilter decodes a list's metadata query: "k=v&k2=v2" with each
// key and value URL-encoded once more (the query itself undid one layer).
func metadataFilter(v string) (map[string]string, error) {
	if v == "" {
		return nil, nil
	}
	pairs, err := url.ParseQuery(v)
	if err != nil {
		return nil, invalid("metadata: %q: want k=v&k2=v2, URL-encoded: %v", v, err)
	}
	out := map[string]string{}
	for k, vs := range pairs {
		key, err := url.QueryUnescape(k)
		if err != nil {
			return nil, invalid("metadata: key %q: %v", k, err)
		}
		val, err := url.QueryUnescape(vs[len(vs)-1])
		if err != nil {
			return nil, invalid("metadata: value of %q: %v", key, err)
		}
		out[key] = val
	}
	return out, nil
}

// matches says whether metadata holds every pair of want.
func matches(metadata, want map[string]string) bool {
	for k, v := range want {
		if got, ok := metadata[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func pageLimit(v string) (int, error) {
	if v == "" {
		return defaultLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxLimit {
		return 0, invalid("limit: %q: want a number from 1 to %d", v, maxLimit)
	}
	return n, nil
}

// paginate returns the page of items (sorted by key, descending when desc)
// after the cursor token, and the cursor of the page after it ("" at the
// end). A cursor is the key of the last item of its page, so items that
// come or go between pages move no other item across a page boundary.
func paginate[T any](items []T, key func(T) string, token string, limit int, desc bool) ([]T, string, error) {
	start := 0
	if token != "" {
		b, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil {
			return nil, "", invalid("nextToken: %q is not a token a list returned", token)
		}
		last := string(b)
		start = len(items)
		for i, it := range items {
			if k := key(it); (!desc && k > last) || (desc && k < last) {
				start = i
				break
			}
		}
	}
	end := min(start+limit, len(items))
	page := items[start:end]
	if end == len(items) {
		return page, "", nil
	}
	return page, base64.RawURLEncoding.EncodeToString([]byte(key(page[len(page)-1]))), nil
}

// metrics is GET /sandboxes/{id}/metrics?start&end (Unix seconds): the
// guest's samples, oldest first.
func (f *Facade) metrics(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var bounds [2]time.Time
	for i, name := range []string{"start", "end"} {
		v := q.Get(name)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			f.fail(w, r, invalid("%s: %q: want Unix seconds", name, v))
			return
		}
		bounds[i] = time.Unix(n, 0)
	}
	id := r.PathValue("id")
	if _, _, err := f.lookup(id); err != nil {
		f.fail(w, r, err)
		return
	}
	samples, err := f.sbs.Metrics(id, bounds[0], bounds[1])
	if err != nil {
		f.fail(w, r, err)
		return
	}
	out := []Metric{}
	for _, s := range samples {
		if m, ok := metric(s); ok {
			out = append(out, m)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// latestMetrics is GET /sandboxes/metrics?sandbox_ids=a,b: each named
// sandbox's latest guest sample.
func (f *Facade) latestMetrics(w http.ResponseWriter, r *http.Request) {
	out := SandboxesWithMetrics{Sandboxes: map[string]Metric{}}
	for _, id := range strings.Split(r.URL.Query().Get("sandbox_ids"), ",") {
		if id = strings.TrimSpace(id); id == "" {
			continue
		}
		samples, err := f.sbs.Metrics(id, time.Time{}, time.Time{})
		if errors.Is(err, sandbox.ErrNotFound) {
			continue
		} else if err != nil {
			f.fail(w, r, err)
			return
		}
		for i := len(samples) - 1; i >= 0; i-- {
			if m, ok := metric(samples[i]); ok {
				out.Sandboxes[id] = m
				break
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// metric is a sample as E2B reports it: the guest's view; a sample without
// one (the agent did not answer) is none.
func metric(s sandbox.Sample) (Metric, bool) {
	g := s.Guest
	if g == nil {
		return Metric{}, false
	}
	return Metric{
		Timestamp: rfc3339(s.Time), TimestampUnix: s.Time.Unix(), CPUCount: g.CPUCount, CPUUsedPct: g.CPUUsedPct,
		MemUsed: g.MemUsed, MemTotal: g.MemTotal, MemCache: g.MemCache, DiskUsed: g.DiskUsed, DiskTotal: g.DiskTotal,
	}, true
}

// createSnapshot is POST /sandboxes/{id}/snapshots: a named snapshot of
// the sandbox (named for it when the body names none), which a create
// takes as its templateID.
func (f *Facade) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var body SnapshotRequest
	rec, _, ok := f.target(w, r, &body)
	if !ok {
		return
	}
	id := rec.ID
	name := body.Name
	if name == "" {
		name = fmt.Sprintf("%s-%d", id, time.Now().UnixMilli())
	}
	sn, err := f.sbs.CreateSnapshot(r.Context(), id, name)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, SnapshotInfo{SnapshotID: sn.Name, Names: []string{sn.Name}})
}

// listSnapshots is GET /snapshots?sandboxID&name&limit&nextToken, oldest
// first.
func (f *Facade) listSnapshots(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := pageLimit(q.Get("limit"))
	if err != nil {
		f.fail(w, r, err)
		return
	}
	all, err := f.sbs.ListSnapshots(r.Context())
	if err != nil {
		f.fail(w, r, err)
		return
	}
	var sns []store.Snapshot
	for _, sn := range all {
		if (q.Get("sandboxID") == "" || sn.Sandbox == q.Get("sandboxID")) && (q.Get("name") == "" || sn.Name == q.Get("name")) {
			sns = append(sns, sn)
		}
	}
	key := func(sn store.Snapshot) string { return sortKey(sn.CreatedAt, sn.Name) }
	slices.SortFunc(sns, func(a, b store.Snapshot) int { return strings.Compare(key(a), key(b)) })
	page, next, err := paginate(sns, key, q.Get("nextToken"), limit, false)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	if next != "" {
		w.Header().Set(nextTokenHeader, next)
	}
	out := make([]SnapshotInfo, 0, len(page))
	for _, sn := range page {
		out = append(out, SnapshotInfo{SnapshotID: sn.Name, Names: []string{sn.Name}})
	}
	writeJSON(w, http.StatusOK, out)
}

// deleteSnapshot is DELETE /templates/{id}, which the SDKs send to delete a
// snapshot; deleting a template is the build API's, not served.
func (f *Facade) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := f.sbs.DeleteSnapshot(r.Context(), id)
	if errors.Is(err, sandbox.ErrSnapshotNotFound) && f.isTemplate(id) {
		err = errNotServed("template " + id + ": deleting templates is not served: remove it on the host")
	}
	if err != nil {
		f.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *Facade) isTemplate(name string) bool {
	if _, ok := f.cfg.Templates[name]; ok || name == DefaultTemplate {
		return true
	}
	tpls, err := f.tpl.List()
	if err != nil {
		return false
	}
	return slices.ContainsFunc(tpls, func(t template.Template) bool { return t.Name == name })
}
