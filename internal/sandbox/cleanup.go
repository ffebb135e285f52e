package sandbox

import (
	"context"
	"errors"
)

// cleanup is a stack of release functions: every acquire pushes its release
// right after it succeeds, and run releases in reverse order. Releases run
// under a context that is never cancelled: cancellation stops acquiring, never
// releasing.
type cleanup struct {
	fns []func(context.Context) error
}

func (c *cleanup) add(fn func(context.Context) error) { c.fns = append(c.fns, fn) }

// run releases everything, keeps going past failures and returns them joined.
func (c *cleanup) run(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		if err := c.fns[i](ctx); err != nil {
			errs = append(errs, err)
		}
	}
	c.fns = nil
	return errors.Join(errs...)
}
