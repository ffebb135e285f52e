//go:build linux

package uffd

import "testing"

// FuzzHandshakeRegions decodes what a VMM sends as its guest memory
// regions and sets up the server's view of them, as Serve does: a bad list
// is refused with an error, and a good one never makes the server allocate
// beyond what the regions' pages need.
func FuzzHandshakeRegions(f *testing.F) {
	for _, seed := range []string{
		`[{"base_host_virt_addr":140737488355328,"size":268435456,"offset":0,"page_size":4096}]`,
		`[{"base_host_virt_addr":2097152,"size":4194304,"offset":0,"page_size_kib":2048}]`,
		`[{"base_host_virt_addr":0,"size":18446744073709547520,"offset":0,"page_size":4096}]`,
		`[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0,"page_size":4096}]`,
		`[{"base_host_virt_addr":4096,"size":4096,"offset":4096,"page_size_kib":18014398509481984}]`,
		`[]`, `{}`, `[{"size":1}]`, `[{"base_host_virt_addr":4096,"size":4096,"page_size":3}]`, "\x00",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		regions, err := parseRegions(data)
		if err != nil {
			return
		}
		for _, r := range regions {
			if r.Size > maxRegion {
				t.Fatalf("region of %d bytes accepted", r.Size)
			}
			reg := newRegion(r)
			if !reg.contains(r.BaseHostVirtAddr) || reg.pages == 0 {
				t.Fatalf("region %+v: %d pages, contains its base: %v", r, reg.pages, reg.contains(r.BaseHostVirtAddr))
			}
		}
	})
}
