//go:build linux

package server

import (
	"time"

	"golang.org/x/sys/unix"
)

// setSystemClock sets CLOCK_REALTIME (the agent runs as root in the guest).
func setSystemClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}
