package template

import (
	"errors"
	"testing"
	"testing/fstest"
)

func TestReadAgent(t *testing.T) {
	tests := []struct {
		name    string
		fsys    fstest.MapFS
		want    string
		wantErr error
	}{
		{"absent", fstest.MapFS{"agentbin/README.md": {Data: []byte("x")}}, "", ErrNoAgent},
		{"empty", fstest.MapFS{"agentbin/ember-agent": {Data: nil}}, "", ErrNoAgent},
		{"present", fstest.MapFS{"agentbin/ember-agent": {Data: []byte("\x7fELF")}}, "\x7fELF", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readAgent(tc.fsys)
			if !errors.Is(err, tc.wantErr) || string(got) != tc.want {
				t.Fatalf("readAgent = %q, %v; want %q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestAgentBinaryEmbedded(t *testing.T) {
	b, err := AgentBinary()
	if errors.Is(err, ErrNoAgent) {
		t.Skip("no agent in agentbin/: make build puts one there")
	}
	if err != nil || len(b) < 4 || string(b[:4]) != "\x7fELF" {
		t.Fatalf("AgentBinary = %d bytes, %v; want an ELF binary", len(b), err)
	}
}
