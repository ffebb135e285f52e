//go:build !linux

package usage

import "errors"

// errUnsupported is what the readers answer where there is no /proc.
var errUnsupported = errors.New("resource use is read from Linux's /proc only")

// ReadSystem reads nothing off Linux.
func ReadSystem(proc, root string) (System, error) { return System{}, errUnsupported }

// ReadProcess reads nothing off Linux.
func ReadProcess(pid int) (Process, error) { return Process{}, errUnsupported }
