package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/emberhq/ember/client"
)

func shellCmd() *cobra.Command {
	var user, cwd string
	cmd := &cobra.Command{
		Use:     "shell ID [-- CMD [ARGS...]]",
		Short:   "Open a terminal in a sandbox (a login shell, or CMD); exits with its exit code",
		Example: "  ember shell <id>\n  ember shell -u root <id>\n  ember shell <id> -- python3",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			o := client.TerminalOptions{Cwd: cwd}
			if len(args) > 1 {
				o.Cmd, o.Args = args[1], args[2:]
			}
			fd := int(os.Stdin.Fd())
			interactive := term.IsTerminal(fd)
			if interactive {
				if w, h, err := term.GetSize(fd); err == nil {
					o.Cols, o.Rows = w, h
				}
			}
			t, err := c.AsUser(user).OpenTerminal(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			defer t.Close()
			if interactive {
				// Raw: every key, ^C included, goes to the sandbox.
				old, err := term.MakeRaw(fd)
				if err != nil {
					return fmt.Errorf("put the terminal in raw mode: %w", err)
				}
				defer term.Restore(fd, old)
				stop := followSize(fd, t)
				defer stop()
			}
			go func() { _, _ = io.Copy(t, os.Stdin) }()
			if _, err := io.Copy(os.Stdout, t); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			code, err := t.ExitCode()
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&user, "user", "u", "", "guest user to run as (default user, the unprivileged account)")
	cmd.Flags().StringVarP(&cwd, "cwd", "w", "", "working directory (default the user's home)")
	return cmd
}

// followSize resizes the sandbox's terminal whenever ours changes
// (SIGWINCH) until stop is called.
func followSize(fd int, t *client.Terminal) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				if w, h, err := term.GetSize(fd); err == nil {
					_ = t.Resize(w, h)
				}
			}
		}
	}()
	return func() { signal.Stop(ch); cancel() }
}
