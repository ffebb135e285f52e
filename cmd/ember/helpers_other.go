//go:build !linux

package main

import "github.com/spf13/cobra"

// helperCmds: the daemon's helper processes run on Linux only.
func helperCmds() []*cobra.Command { return nil }
