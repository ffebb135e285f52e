package build

import (
	"strconv"

	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/wire"
)

// WireTemplate is a template as the API shows it.
func WireTemplate(t template.Template) wire.Template {
	steps, _ := strconv.Atoi(t.Inputs["steps"])
	return wire.Template{
		Name: t.Name, KernelBytes: t.KernelBytes, RootfsBytes: t.RootfsBytes,
		DiskMiB: int(t.RootfsSizeBytes >> 20), BuiltAt: t.BuiltAt,
		Source: t.Source, Steps: steps, StartCmd: t.StartCmd, ReadyCmd: t.ReadyCmd,
	}
}

// WireTemplates is every template as the API lists it, each with the
// others its build shares cache entries with: the length of the common
// prefix of their layers.
func WireTemplates(tpls []template.Template) []wire.Template {
	out := make([]wire.Template, len(tpls))
	for i, t := range tpls {
		out[i] = WireTemplate(t)
		for _, o := range tpls {
			if o.Name == t.Name {
				continue
			}
			n := 0
			for n < len(t.Layers) && n < len(o.Layers) && t.Layers[n] == o.Layers[n] {
				n++
			}
			if n > 0 {
				if out[i].SharedWith == nil {
					out[i].SharedWith = map[string]int{}
				}
				out[i].SharedWith[o.Name] = n
			}
		}
	}
	return out
}

func wireTemplate(t template.Template) *wire.Template {
	w := WireTemplate(t)
	return &w
}
