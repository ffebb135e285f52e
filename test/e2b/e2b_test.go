// Package e2b is the E2B tier: the unchanged e2b npm package, at each
// version the compatibility matrix pins, drives a real daemon and real
// guests through node's test runner (flows.mjs). The pinned 2.51.0 reaches
// the daemon with E2B_API_URL and E2B_SANDBOX_URL over plain HTTP; the
// older ones, which know only https://api.<E2B_DOMAIN> and
// https://<port>-<id>.<E2B_DOMAIN>, reach it on its TLS listener with a
// certificate this test makes.
package e2b

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/test/harness"
)

// Network slots of the tier's daemon: 5200 up.
const (
	slotFirst = 5200
	slotSpan  = 50
)

// domain is the sandbox domain the https-only SDKs are given; resolve.mjs
// points it at the loopback address.
const domain = "ember.test"

// e2bTemplate is the name the tier's copy of the test template has in its
// private registry, and what E2B's "base" maps to there (e2b-templates).
const e2bTemplate = "e2b"

// sdk is one pinned SDK of the matrix.
type sdk struct {
	// dir holds its package.json and lock file, under test/e2b.
	dir string
	// https: it reaches the daemon at https://api.<E2B_DOMAIN> only.
	https bool
}

var matrix = []sdk{
	{dir: "."},
	{dir: "v2early", https: true},
	{dir: "v1", https: true},
}

func TestMain(m *testing.M) { os.Exit(harness.RunKeepingHost(m)) }

// TestSDKs runs flows.mjs with every pinned SDK against one daemon.
func TestSDKs(t *testing.T) {
	harness.Require(t)
	testutil.RequireTool(t, "node")
	for _, s := range matrix {
		if _, err := os.Stat(filepath.Join(s.dir, "node_modules", "e2b", "package.json")); err != nil {
			msg := fmt.Sprintf("test/e2b/%s/node_modules/e2b missing (%v): run `make npm`", s.dir, err)
			if os.Getenv("EMBER_REQUIRE_ALL") == "1" {
				t.Fatalf("%s (EMBER_REQUIRE_ALL=1 forbids this skip)", msg)
			}
			t.Skip(msg)
		}
	}
	certs := makeCerts(t, domain)
	tlsAddr := harness.FreeAddr(t)
	// A registry of the tier's own: the daemon builds its default
	// template into the registry it is given, and the shared one is
	// others' to build.
	registry := t.TempDir()
	start := time.Now()
	d := harness.ForTest(t, harness.Options{
		SlotFirst: slotFirst, Templates: registry,
		// The flows of three SDKs keep a dozen small, mostly idle
		// sandboxes; admission's default (four vCPUs per host CPU)
		// would refuse some on a 2-core host.
		Args: []string{"--e2b-templates", "base=" + e2bTemplate, "--domain", domain, "--metrics-interval", "1s",
			"--tls-listen", tlsAddr, "--tls-cert", certs.cert, "--tls-key", certs.key, "--vcpu-overcommit", "16"},
	}, slotSpan)
	t.Logf("daemon up in %s (it built its default template)", time.Since(start).Round(time.Millisecond))
	if err := harness.E2BTemplate(registry, e2bTemplate); err != nil {
		t.Fatal(err)
	}
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	for _, s := range matrix {
		ver := installedVersion(t, s.dir)
		t.Run("e2b@"+ver, func(t *testing.T) {
			env := append(withoutE2B(os.Environ()), "E2B_API_KEY="+d.APIKey, "EMBER_E2B_VERSION="+ver,
				fmt.Sprintf("EMBER_E2B_PINNED=%t", s.dir == "."))
			if s.https {
				resolve, _ := filepath.Abs("resolve.mjs")
				env = append(env, "E2B_DOMAIN="+domain+":"+tlsPort, "EMBER_E2B_DOMAIN="+domain,
					"NODE_EXTRA_CA_CERTS="+certs.ca, "NODE_OPTIONS=--import="+resolve)
			} else {
				env = append(env, "E2B_API_URL="+d.URL, "E2B_SANDBOX_URL="+d.URL)
			}
			runNode(t, s.dir, "e2b.test.mjs", env)
		})
	}
}

// withoutE2B drops the E2B_* variables of the test's own environment, so
// only what the test sets reaches the SDK (E2B_DEBUG above all).
func withoutE2B(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "E2B_") {
			out = append(out, kv)
		}
	}
	return out
}

// runNode runs node's test runner on dir's script, its output in the
// test's log; a failing flow (or node failing) fails the test.
func runNode(t *testing.T, dir, script string, env []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	// --test-force-exit: once the flows are done, the SDK's idle
	// keep-alive connections do not hold the run open.
	cmd := exec.CommandContext(ctx, "node", "--test", "--test-force-exit", "--test-reporter=spec", script)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var skipped []string
	wg.Go(func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			t.Log(line)
			if strings.Contains(line, "# SKIP") {
				skipped = append(skipped, strings.TrimSpace(line))
			}
		}
		io.Copy(io.Discard, out)
	})
	wg.Wait()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("node --test in test/e2b/%s: %v", dir, err)
	}
	for _, s := range skipped {
		t.Logf("skipped: %s", s)
	}
}

// installedVersion is the version of dir's installed e2b package, which
// its lock file pins.
func installedVersion(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "e2b", "package.json"))
	if err != nil {
		t.Fatal(err)
	}
	var p struct{ Version string }
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	return p.Version
}

// certFiles are a CA and a certificate it signed for api.<domain> and
// *.<domain>, as PEM files.
type certFiles struct{ ca, cert, key string }

func makeCerts(t *testing.T, domain string) certFiles {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ember e2b tier CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTpl, caTpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "api." + domain},
		DNSNames:  []string{"api." + domain, "*." + domain, domain},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	f := certFiles{ca: filepath.Join(dir, "ca.pem"), cert: filepath.Join(dir, "cert.pem"), key: filepath.Join(dir, "key.pem")}
	for path, block := range map[string]*pem.Block{
		f.ca: {Type: "CERTIFICATE", Bytes: caDER}, f.cert: {Type: "CERTIFICATE", Bytes: leafDER}, f.key: {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}
