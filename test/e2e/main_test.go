package e2e

import (
	"os"
	"testing"

	"github.com/emberhq/ember/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.RunKeepingHost(m)) }
