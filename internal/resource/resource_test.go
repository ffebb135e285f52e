package resource

import "testing"

func TestLowerWithin(t *testing.T) {
	def := Limits{CPUs: 2, MemoryMiB: 448, Pids: 256, IOWeight: 100}
	for _, tc := range []struct {
		name  string
		req   Limits
		field string
	}{
		{"nothing asked", Limits{}, ""},
		{"all lower", Limits{CPUs: 0.5, MemoryMiB: 300, Pids: 64, IOWeight: 10}, ""},
		{"equal", def, ""},
		{"more cpu", Limits{CPUs: 3}, "cpus"},
		{"more memory", Limits{MemoryMiB: 449}, "memory_mib"},
		{"more pids", Limits{Pids: 1000}, "pids"},
		{"more io", Limits{IOWeight: 1000}, "io_weight"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := def.Lower(tc.req)
			field, ok := got.Within(def)
			if ok != (tc.field == "") || field != tc.field {
				t.Fatalf("Within = %q %v, want %q", field, ok, tc.field)
			}
		})
	}
	if f, ok := (Limits{CPUs: 1}).Within(Limits{}); !ok {
		t.Fatalf("no bounds refused %s", f)
	}
}
