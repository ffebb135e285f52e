package main

import (
	"slices"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
)

// TestMarked checks that the default package list holds the tests that
// need the tier and not the ones that do not.
func TestMarked(t *testing.T) {
	testutil.RequireTool(t, "go")
	pkgs, err := marked(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"github.com/emberhq/ember/internal/rootfs/devmapper",
		"github.com/emberhq/ember/internal/testhost",
	} {
		if !slices.Contains(pkgs, want) {
			t.Errorf("test-host packages %v lack %s", pkgs, want)
		}
	}
	if slices.Contains(pkgs, "github.com/emberhq/ember/internal/rootfs/copy") {
		t.Errorf("test-host packages %v hold the copy backend, which runs here", pkgs)
	}
}
