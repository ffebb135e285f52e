package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fuzzPaths are the agent's endpoints a fuzzed body may reach. Start is
// not among them: a body that happens to decode to a valid StartRequest
// would run a command on the test host.
var fuzzPaths = []string{
	"/init",
	"/process.Process/List",
	"/process.Process/Connect",
	"/process.Process/Update",
	"/process.Process/SendInput",
	"/process.Process/SendSignal",
	"/process.Process/CloseStdin",
	"/process.Process/StreamInput",
	"/filesystem.Filesystem/Stat",
}

var fuzzTypes = []string{"application/json", "application/proto", "application/connect+json", "application/connect+proto", "text/plain", ""}

// FuzzAgentRequests sends the agent what an SDK (or anything inside the
// guest) may send: the /init body and the Connect messages of the process
// service, with any content type. The agent answers each, never panics,
// never sets the clock it is not asked to, and still answers /health.
func FuzzAgentRequests(f *testing.F) {
	for i := range fuzzPaths {
		f.Add(uint8(i), uint8(0), []byte(`{}`))
	}
	for _, body := range []string{
		`{"envVars":{"A":"b"},"accessToken":"t","timestamp":"2030-01-01T00:00:00Z"}`,
		`{"envVars":{"":"x"},"accessToken":""}`, `{"timestamp":"not a time"}`, `[`,
		`{"process":{"pid":123}}`, `{"process":{"tag":"x"},"signal":"SIGNAL_SIGKILL"}`,
		`{"process":{"pid":1},"input":{"stdin":"aGk="}}`, "\x00\x00\x00\x00\x05hello",
	} {
		for ct := range fuzzTypes {
			f.Add(uint8(0), uint8(ct), []byte(body))
			f.Add(uint8(4), uint8(ct), []byte(body))
		}
	}
	f.Fuzz(func(t *testing.T, path, ctype uint8, body []byte) {
		setClock = func(time.Time) error { return nil }
		defer func() { setClock = setSystemClock }()
		s := New(Config{Dir: "/", Env: []string{"PATH=/bin"}})
		defer s.Close()
		h := s.Handler()
		req := httptest.NewRequest("POST", fuzzPaths[int(path)%len(fuzzPaths)], strings.NewReader(string(body)))
		if ct := fuzzTypes[int(ctype)%len(fuzzTypes)]; ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		req.Header.Set("Connect-Protocol-Version", "1")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusNotImplemented {
			t.Fatalf("%s %q: %d %s", req.URL.Path, body, rec.Code, rec.Body)
		}
		health := httptest.NewRecorder()
		h.ServeHTTP(health, httptest.NewRequest("GET", "/health", nil))
		if health.Code/100 != 2 {
			t.Fatalf("/health after %s %q: %d", req.URL.Path, body, health.Code)
		}
	})
}
