package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/sandbox"
)

// fakeWarm keeps pool sizes, refusing what the manager refuses.
type fakeWarm struct {
	mu    sync.Mutex
	pools map[string]sandbox.WarmPool
}

func (f *fakeWarm) WarmPools() []sandbox.WarmPool {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []sandbox.WarmPool
	for _, p := range f.pools {
		out = append(out, p)
	}
	return out
}

func (f *fakeWarm) SetWarm(ctx context.Context, template string, count int) (sandbox.WarmPool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if template != "base" {
		return sandbox.WarmPool{}, fmt.Errorf("template %q: %w", template, sandbox.ErrTemplateNotFound)
	}
	if count < 0 {
		return sandbox.WarmPool{}, &sandbox.InvalidError{Field: "count", Reason: "must be between 0 and 1024"}
	}
	p := f.pools[template]
	p.Template, p.Target = template, count
	f.pools[template] = p
	return p, nil
}

func TestWarmPools(t *testing.T) {
	retry := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	warm := &fakeWarm{pools: map[string]sandbox.WarmPool{
		"base": {Template: "base", Target: 2, Ready: 1, Starting: 1, LastError: "restore: no slot", RetryAt: retry},
	}}
	_, c := newServerWith(t, &fakeSandboxes{}, func(cfg *Config) { cfg.Warm = warm })
	ctx := context.Background()
	pools, err := c.WarmPools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []client.WarmPool{{Template: "base", Target: 2, Ready: 1, Starting: 1, LastError: "restore: no slot", RetryAt: &retry}}
	if !reflect.DeepEqual(pools, want) {
		t.Errorf("pools %+v, want %+v", pools, want)
	}
	p, err := c.SetWarmPool(ctx, "base", 4)
	if err != nil || p.Target != 4 || p.Template != "base" {
		t.Fatalf("set: %+v, %v", p, err)
	}
	for _, tc := range []struct {
		name, template string
		count          int
		status         int
		code           string
	}{
		{"unknown template", "nope", 1, http.StatusNotFound, "template_not_found"},
		{"negative", "base", -1, http.StatusBadRequest, "invalid_argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.SetWarmPool(ctx, tc.template, tc.count)
			var apiErr *client.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != tc.status || apiErr.Code != tc.code {
				t.Fatalf("error %v, want %d %s", err, tc.status, tc.code)
			}
		})
	}
	t.Run("unknown field", func(t *testing.T) {
		srv, _ := newServerWith(t, &fakeSandboxes{}, func(cfg *Config) { cfg.Warm = warm })
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v1/templates/base/warm", strings.NewReader(`{"size":3}`))
		req.Header.Set("X-API-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("status %d, want 400", resp.StatusCode)
		}
	})
}
