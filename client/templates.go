package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"

	"github.com/emberhq/ember/wire"
)

// BuildError is a template build that started and failed: the daemon's
// last event, with the failing step, its exit code and its last lines of
// output when a step failed.
type BuildError struct {
	Event BuildEvent
}

func (e *BuildError) Error() string {
	msg := e.Event.Message
	if e.Event.Code != "" {
		msg += " (" + e.Event.Code + ")"
	}
	return msg
}

// BuildTemplate builds a template in the daemon from a Dockerfile in a
// build context (contextTar, a tar stream; its Dockerfile at
// req.Dockerfile, "Dockerfile" by default), calling on with every progress
// event as it arrives. Bad input is an *APIError (before any event); a
// build that fails once started is a *BuildError.
func (c *Client) BuildTemplate(ctx context.Context, req BuildTemplateRequest, contextTar io.Reader, on func(BuildEvent)) (Template, error) {
	q := url.Values{"name": {req.Name}}
	for k, v := range map[string]string{"dockerfile": req.Dockerfile, "start_cmd": req.StartCmd, "ready_cmd": req.ReadyCmd} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if req.DiskMiB > 0 {
		q.Set("disk_mib", strconv.Itoa(req.DiskMiB))
	}
	if req.NoCache {
		q.Set("no_cache", "1")
	}
	for k, v := range req.BuildArgs {
		q.Add("build_arg", k+"="+v)
	}
	resp, err := c.sendRaw(ctx, "POST", "/v1/templates?"+q.Encode(), "application/x-tar", contextTar)
	if err != nil {
		return Template{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev BuildEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return Template{}, fmt.Errorf("decode build event %q: %w", strings.TrimSpace(sc.Text()), err)
		}
		if on != nil {
			on(ev)
		}
		switch ev.Type {
		case wire.BuildDone:
			if ev.Template == nil {
				return Template{}, fmt.Errorf("build of %q ended without its template", req.Name)
			}
			return *ev.Template, nil
		case wire.BuildError:
			return Template{}, &BuildError{Event: ev}
		}
	}
	if err := sc.Err(); err != nil {
		return Template{}, fmt.Errorf("read build progress: %w", err)
	}
	return Template{}, fmt.Errorf("build of %q: the daemon's answer ended before the build did", req.Name)
}

// DeleteTemplate deletes a template no sandbox or snapshot needs (a
// template_in_use *APIError otherwise).
func (c *Client) DeleteTemplate(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/templates/"+url.PathEscape(name), nil, nil)
}
