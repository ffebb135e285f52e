//go:build linux

package main

import (
	"context"
	"testing"

	"github.com/emberhq/ember/internal/build"
	"github.com/emberhq/ember/internal/sandbox"
)

// Every build the daemon runs reaches the lifecycle metrics, a refused one
// as an error.
func TestBuildsAreObserved(t *testing.T) {
	var got []sandbox.Op
	b := builds{Builder: &build.Builder{}, observe: func(op sandbox.Op) { got = append(got, op) }}
	_, err := b.Build(context.Background(), build.Request{Spec: build.Spec{Name: "Not A Name"}}, func(build.Event) {})
	if err == nil {
		t.Fatal("a bad template name built")
	}
	if len(got) != 1 || got[0].Name != sandbox.OpTemplateBuild || got[0].Template != "Not A Name" || got[0].Err == nil {
		t.Fatalf("observed %+v", got)
	}
}
