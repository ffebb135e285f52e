package main

import (
	"log/slog"
	"os"
	"testing"
)

// TestBench runs the benchmark from a test binary, so the test-host tier
// can run it where device-mapper exists:
//
//	go run ./test/testhost -memory 10240 -env EMBER_BENCH_ROOTFS=1 ./test/benchrootfs
//
// It is opt-in (a benchmark, not a check) and skips otherwise.
func TestBench(t *testing.T) {
	if os.Getenv("EMBER_BENCH_ROOTFS") != "1" {
		t.Skip("a benchmark: set EMBER_BENCH_ROOTFS=1 to run it")
	}
	if err := run(t.Context(), t.TempDir(), 3, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
		t.Fatal(err)
	}
}
