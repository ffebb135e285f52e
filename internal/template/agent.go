package template

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
)

// agentFS holds the guest agent binary when the daemon was built with
// `make build`, which puts a static ember-agent into agentbin/ first.
//
//go:embed agentbin
var agentFS embed.FS

// ErrNoAgent is returned by AgentBinary when the daemon was built without the
// guest agent.
var ErrNoAgent = errors.New("ember built without the guest agent: build with make build")

// AgentBinary returns the guest agent binary embedded in this build of ember.
func AgentBinary() ([]byte, error) {
	return readAgent(agentFS)
}

func readAgent(fsys fs.FS) ([]byte, error) {
	b, err := fs.ReadFile(fsys, "agentbin/ember-agent")
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(b) == 0) {
		return nil, ErrNoAgent
	}
	if err != nil {
		return nil, fmt.Errorf("read embedded agent: %w", err)
	}
	return b, nil
}
