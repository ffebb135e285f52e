package e2b

import (
	"fmt"
	"testing"

	"github.com/emberhq/ember/wire"
)

// TestBuildStepNames holds ember's step numbers (1 is the base) to E2B's
// step names, which the SDK maps back to the line of the user's
// definition.
func TestBuildStepNames(t *testing.T) {
	b := &e2bBuild{nInstr: 3}
	for n, want := range map[int]string{0: "", 1: "base", 2: "1", 4: "3", 5: "finalize", 6: "finalize"} {
		if got := b.e2bStep(n); got != want {
			t.Errorf("step %d: %q, want %q", n, got, want)
		}
	}
}

// TestBuildLogKeepsOffsets checks output is split into lines (a line
// across events is one entry) and that past maxLogEntries the oldest go
// while offsets still count from the first.
func TestBuildLogKeepsOffsets(t *testing.T) {
	b := &e2bBuild{partial: map[string]string{}, nInstr: 1}
	b.emit(wire.BuildEvent{Type: wire.BuildOutput, Step: 2, Stream: "stdout", Data: []byte("a")})
	b.emit(wire.BuildEvent{Type: wire.BuildOutput, Step: 2, Stream: "stdout", Data: []byte("b\nc")})
	b.emit(wire.BuildEvent{Type: wire.BuildStepDone, Step: 2, Cached: true})
	if len(b.log) != 2 || b.log[0].Message != "ab" || b.log[1].Message != "c" || b.log[0].Step != "1" {
		t.Fatalf("log %+v", b.log)
	}
	for i := range maxLogEntries {
		b.emit(wire.BuildEvent{Type: wire.BuildLog, Message: fmt.Sprint(i)})
	}
	if len(b.log) != maxLogEntries || b.dropped != 2 || b.log[0].Message != "0" {
		t.Fatalf("kept %d from %q, dropped %d", len(b.log), b.log[0].Message, b.dropped)
	}
}
