//go:build !linux

package server

import (
	"errors"
	"time"
)

// setSystemClock is Linux-only: the agent runs in Linux guests.
func setSystemClock(time.Time) error {
	return errors.New("setting the clock is supported on linux only")
}
