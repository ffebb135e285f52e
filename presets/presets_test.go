package presets

import (
	"bytes"
	"testing"

	"github.com/emberhq/ember/internal/build"
)

// TestPresetsParse checks every preset is a Dockerfile a build takes,
// with the tools the code preset promises.
func TestPresetsParse(t *testing.T) {
	if len(Names()) == 0 {
		t.Fatal("no presets embedded")
	}
	for _, n := range Names() {
		b, err := Dockerfile(n)
		if err != nil {
			t.Fatal(err)
		}
		spec, err := build.ParseDockerfile(bytes.NewReader(b), nil)
		if err != nil {
			t.Fatalf("preset %s: %v", n, err)
		}
		if spec.Base.Ref != "debian:bookworm" || len(spec.Warnings) != 0 {
			t.Errorf("preset %s: base %+v, warnings %q", n, spec.Base, spec.Warnings)
		}
	}
	b, _ := Dockerfile("code")
	for _, tool := range []string{"python3", "python3-pip", "python3-venv", "nodejs", "npm", "git", "curl", "build-essential"} {
		if !bytes.Contains(b, []byte(" "+tool)) {
			t.Errorf("the code preset does not install %s", tool)
		}
	}
	if _, err := Dockerfile("nope"); err == nil {
		t.Error("an unknown preset was found")
	}
}
