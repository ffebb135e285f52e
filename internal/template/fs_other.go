//go:build !linux

package template

import (
	"errors"
)

// Templates are built and used only on Linux hosts; these stubs keep the
// package compiling elsewhere (for the CLI's client side and editors).

func usage(string) (int64, int64, error) { return 0, 0, errors.ErrUnsupported }

func publish(string, string) error { return errors.ErrUnsupported }

func digHoles(string) error { return errors.ErrUnsupported }
