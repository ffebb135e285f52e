// Package presets holds the Dockerfiles of ember's ready-made templates
// (`ember template build NAME --preset PRESET`), embedded into the CLI so
// it builds them from anywhere.
package presets

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
)

//go:embed */Dockerfile
var files embed.FS

// Dockerfile returns the Dockerfile of the named preset.
func Dockerfile(name string) ([]byte, error) {
	b, err := files.ReadFile(name + "/Dockerfile")
	if err != nil {
		return nil, fmt.Errorf("preset %q: none such (there are: %v)", name, Names())
	}
	return b, nil
}

// Names lists the presets.
func Names() []string {
	dirs, _ := fs.ReadDir(files, ".")
	var out []string
	for _, d := range dirs {
		out = append(out, d.Name())
	}
	sort.Strings(out)
	return out
}
