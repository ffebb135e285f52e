package vmmtest

import "testing"

func TestTicksSkipsALineBeingWritten(t *testing.T) {
	log := []byte("boot noise\n" + "vmmtest-tick 1 100 06:00:ac:10:00:02\n" + "vmmtest-tick 2 200 06:00:ac:10:0")
	got := ticks(log)
	if len(got) != 1 || got[0].N != 1 || got[0].MAC != "06:00:ac:10:00:02" {
		t.Fatalf("ticks = %+v, want only the complete first line", got)
	}
}
