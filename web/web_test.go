package web

import (
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

// TestPageIsSelfContained holds the page to loading nothing from another
// origin, since the daemon serves it offline under a same-origin
// Content-Security-Policy: its scripts and styles are the embedded assets,
// every one of which is there.
func TestPageIsSelfContained(t *testing.T) {
	page := string(TestPage)
	external := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`)
	if m := external.FindString(page); m != "" {
		t.Errorf("the page loads from another origin: %s", m)
	}
	for _, bad := range []string{"@import", "<iframe"} {
		if strings.Contains(page, bad) {
			t.Errorf("the page contains %q", bad)
		}
	}
	loads := regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(page, -1)
	if len(loads) == 0 {
		t.Fatal("the page loads no assets; it should load xterm.js")
	}
	for _, m := range loads {
		name, ok := strings.CutPrefix(m[1], "/test/assets/")
		if !ok {
			t.Errorf("the page loads %s, not an embedded asset under /test/assets/", m[1])
			continue
		}
		if _, err := fs.Stat(Assets, name); err != nil {
			t.Errorf("asset %s is not embedded (make build copies it from web/node_modules): %v", name, err)
		}
	}
}

// TestPageUsesTheAPI checks that the page reaches every endpoint its
// controls stand for.
func TestPageUsesTheAPI(t *testing.T) {
	for _, name := range []struct{ what, text string }{
		{"list and create sandboxes", `"/v1/sandboxes"`},
		{"stream exec output", `"/exec/stream"`},
		{"pause", `"/pause"`},
		{"resume", `"/resume"`},
		{"fork", `"/fork"`},
		{"snapshots", `"/v1/snapshots"`},
		{"templates", `"/v1/templates"`},
		{"files", `"/files"`},
		{"the terminal", `"/pty?"`},
		{"the key header", `"X-API-Key"`},
		{"follow the event stream", `"/v1/events"`},
		{"usage samples for the charts", `"/metrics?start="`},
		{"the key kept for the session", `sessionStorage`},
	} {
		t.Run(name.what, func(t *testing.T) {
			if !strings.Contains(string(TestPage), name.text) {
				t.Errorf("the page never uses %s", name.text)
			}
		})
	}
}

// TestPageFollowsEventsNotPolling holds the page to the event stream for
// its lists: no timer refreshes them.
func TestPageFollowsEventsNotPolling(t *testing.T) {
	if m := regexp.MustCompile(`set(Interval|Timeout)\(\s*refresh(All|Sandboxes|Snapshots)\s*,\s*\d{4,}`).Find(TestPage); m != nil {
		t.Errorf("the page polls its lists: %s", m)
	}
}
