package vmm

import (
	"io"
	"os"
	"strings"
)

// ExitError is a VMM process that ended before its machine was ready: at
// start, or while it loaded a snapshot. Log is the end of what it wrote, so
// that its own words about what went wrong reach the operator.
type ExitError struct {
	// VMM names the monitor ("qemu", "firecracker"); During, when set,
	// says what it was doing ("during start").
	VMM, During string
	// Log is the end of the VMM's log, lines as written.
	Log string
}

func (e *ExitError) Error() string {
	s := e.VMM + " exited"
	if e.During != "" {
		s += " " + e.During
	}
	return s + ": " + strings.ReplaceAll(e.Log, "\n", "; ")
}

// Reason returns the line of Log in which the VMM said what went wrong:
// the first that names an error or a failure, else the last.
func (e *ExitError) Reason() string {
	var last string
	for _, l := range strings.Split(e.Log, "\n") {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		low := strings.ToLower(l)
		for _, w := range []string{"error", "fail", "could not", "cannot", "can't", "unable", "invalid", "denied", "no such"} {
			if strings.Contains(low, w) {
				return l
			}
		}
		last = l
	}
	if last == "" {
		return e.Error()
	}
	return last
}

// maxLogTail bounds what LogTail reads.
const maxLogTail = 2048

// LogTail returns the end of the log at path (its last 2 KiB, trimmed),
// or a note saying why there is none.
func LogTail(path string) string {
	s, err := ReadTail(path)
	switch {
	case err != nil:
		return "no log: " + err.Error()
	case s == "":
		return "empty log"
	}
	return s
}

// LastLine returns the last line of the log at path, "" when it has none.
func LastLine(path string) string {
	s, _ := ReadTail(path)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimSpace(s)
}

// ReadTail returns the last 2 KiB of the file at path, trimmed.
func ReadTail(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > maxLogTail {
		f.Seek(st.Size()-maxLogTail, io.SeekStart)
	}
	b, err := io.ReadAll(f)
	return strings.TrimSpace(string(b)), err
}
