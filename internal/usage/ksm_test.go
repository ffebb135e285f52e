package usage

import (
	"io/fs"
	"testing"
)

func TestReadKSM(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  KSM
	}{
		{"no ksm", nil, KSM{State: "unavailable"}},
		{"off", map[string]string{"run": "0\n", "pages_shared": "0\n", "pages_sharing": "0\n"}, KSM{State: "off"}},
		{"on", map[string]string{"run": "1\n", "pages_shared": "12\n", "pages_sharing": "340\n"}, KSM{State: "on", PagesShared: 12, PagesSharing: 340}},
		{"on, counts unreadable", map[string]string{"run": "1"}, KSM{State: "on"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			read := func(path string) ([]byte, error) {
				for name, v := range tc.files {
					if path == KSMDir+"/"+name {
						return []byte(v), nil
					}
				}
				return nil, fs.ErrNotExist
			}
			if got := ReadKSM(read); got != tc.want {
				t.Errorf("ReadKSM = %+v, want %+v", got, tc.want)
			}
		})
	}
}
