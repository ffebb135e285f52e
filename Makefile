# ember's build, run and test entry points. Every target installs what it
# needs first (idempotently), so `make run` and `make test` work on a fresh
# Debian bookworm machine as root.

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
export GOFLAGS ?= -buildvcs=false

DATA_DIR  ?= /var/lib/ember
CACHE_DIR ?= /var/cache/ember
LISTEN    ?= 127.0.0.1:7070
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null)

# Templates built for the test tiers live in the cache, outside the clone.
TEST_TEMPLATES := $(CACHE_DIR)/test-templates

# Debian packages the daemon, the template build and the tests need
# (prometheus brings promtool, which lints the metrics).
APT_PACKAGES := qemu-system-x86 qemu-utils e2fsprogs busybox-static bash-static \
	linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev \
	cpio xz-utils dwarves kmod nftables iproute2 procps iptables \
	dmsetup xfsprogs btrfs-progs chromium prometheus systemd
# Template builds: mmdebstrap makes the built-in Debian base; the tests
# push images to Debian's docker-registry on loopback.
APT_PACKAGES += mmdebstrap docker-registry
# Node.js and npm (for the protocol test's npm package) come from Debian only
# when the machine has none: a Node.js installed another way ships its own
# npm, which Debian's npm package would conflict with.
NODE_PACKAGES := $(if $(shell command -v npm),,nodejs npm)

# CI forbids skipping a test for a missing prerequisite (KVM excepted).
ifeq ($(CI),true)
export EMBER_REQUIRE_ALL := 1
endif

GO_SOURCES := $(shell find cmd internal client wire web -path web/node_modules -prune -o \( -name '*.go' -o -name '*.yaml' -o -name '*.config' -o -name '*.proto' -o -name '*.html' \) -print 2>/dev/null)

.PHONY: all deps apt npm vmm-user fuzz soak build run test check test-host test-templates template bench bench-network bench-rootfs bench-snapshot bench-uffd bench-files bench-e2b bench-templates proto clean install uninstall
.PHONY: bench-density

all: build

## deps: install the Debian packages, Go modules and npm packages ember needs
deps: apt npm vmm-user
	@go mod download

# The unprivileged user QEMU (and Firecracker's jailer) runs guests as.
VMM_USER ?= ember-vmm
vmm-user:
	@id -u $(VMM_USER) >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
		--home-dir /nonexistent --shell /usr/sbin/nologin $(VMM_USER)

apt:
	@missing=""; for p in $(APT_PACKAGES) $(NODE_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v go >/dev/null || { echo "Go is not installed (want /usr/local/go/bin/go, 1.26 or newer)"; exit 1; }

# The protocol test reads the e2b SDK; the browser test drives Debian's
# Chromium with playwright-core; the /test page's terminal is xterm.js. All
# are pinned by their lock files. The E2B tier's compatibility matrix pins
# two older e2b SDKs beside the protocol test's, each in a directory and
# lock file of its own.
E2B_SDKS := test/e2b test/e2b/v2early test/e2b/v1
npm: $(addsuffix /node_modules/.package-lock.json,$(E2B_SDKS)) test/browser/node_modules/.package-lock.json web/node_modules/.package-lock.json

%/node_modules/.package-lock.json: %/package.json %/package-lock.json
	npm ci --prefix $* --no-audit --no-fund --loglevel=error
	@touch $@

## build: bin/ember, which carries the guest agent and the /test page's assets
build: bin/ember

# xterm.js for the /test page, copied from the pinned npm packages into the
# directory the daemon embeds (no CDN at run time).
WEB_ASSETS := web/assets/xterm.js web/assets/xterm.css web/assets/addon-fit.js
web/assets/xterm.js: web/node_modules/.package-lock.json
	cp web/node_modules/@xterm/xterm/lib/xterm.js $@
web/assets/xterm.css: web/node_modules/.package-lock.json
	cp web/node_modules/@xterm/xterm/css/xterm.css $@
web/assets/addon-fit.js: web/node_modules/.package-lock.json
	cp web/node_modules/@xterm/addon-fit/lib/addon-fit.js $@

bin/ember-agent: $(GO_SOURCES) go.mod go.sum
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $@ ./cmd/ember-agent

internal/template/agentbin/ember-agent: bin/ember-agent
	cp $< $@

bin/ember: internal/template/agentbin/ember-agent $(WEB_ASSETS) web/test.html $(GO_SOURCES) go.mod go.sum
	go build -trimpath -ldflags "-X main.version=$(VERSION) -X main.commit=$(COMMIT)" -o $@ ./cmd/ember

# The crash matrix's daemon: bin/ember with its failpoints compiled in
# (internal/failpoint). Never shipped.
bin/ember-failpoints: internal/template/agentbin/ember-agent $(GO_SOURCES) go.mod go.sum
	go build -tags failpoints -trimpath -ldflags "-X main.version=$(VERSION)-failpoints" -o $@ ./cmd/ember

## template: build the default template (kernel cached in CACHE_DIR)
template: deps build
	EMBER_CACHE_DIR=$(CACHE_DIR) bin/ember template build --dir $(TEST_TEMPLATES)

## run: install, build, build the default template if absent, serve
run: deps build
	EMBER_CACHE_DIR=$(CACHE_DIR) bin/ember serve --listen $(LISTEN) --data-dir $(DATA_DIR) --print-api-key

TEST_ENV := EMBER_TEST_TEMPLATE=$(TEST_TEMPLATES)/base EMBER_BIN=$(CURDIR)/bin/ember \
	EMBER_CACHE_DIR=$(CACHE_DIR) EMBER_E2B_PKG=$(CURDIR)/test/e2b/node_modules/e2b \
	EMBER_ARTIFACTS=$(CURDIR)/test-artifacts EMBER_FAILPOINT_BIN=$(CURDIR)/bin/ember-failpoints

## test: every test tier (unit, privileged, VM under QEMU, test host)
# The VM tier and the browser test run after the others and one after the
# other, not beside them: their daemons reclaim ember slots at and above
# their first index at start, and must not meet anyone else's.
test: deps build bin/ember-failpoints template check
	$(TEST_ENV) go test -race -count=1 -timeout 20m $$(go list ./... | grep -v -e /test/e2e -e /test/browser -e /test/e2b$$)
	$(TEST_ENV) go test -race -count=1 -timeout 20m -v ./test/e2e
	$(TEST_ENV) go test -race -count=1 -timeout 15m -v ./test/e2b
	$(TEST_ENV) go test -race -count=1 -timeout 5m -v ./test/browser
	$(MAKE) --no-print-directory test-host

## check: the CLI builds for a laptop and an arm64 host, and go.mod is tidy
check:
	GOOS=darwin GOARCH=arm64 go build -o /dev/null ./cmd/ember
	GOOS=linux GOARCH=arm64 go build -o /dev/null ./cmd/ember
	go mod tidy -diff

## test-host: the tests this kernel cannot run (device-mapper, nbd, KVM),
## inside a throwaway QEMU VM booted from Debian's cloud kernel
test-host: deps
	go run ./test/testhost -cache $(CACHE_DIR)/testhost

## bench: create→first-exec latency, destroy latency and the phase breakdown;
## a create from the template's snapshot against a cold boot, eight creates
## in flight against eight in a row, a warm claim against one exec round
## trip (BENCH_SLOTS: the daemon's first network slot)
BENCH_SLOTS ?= 4000
bench: deps build template
	EMBER_CACHE_DIR=$(CACHE_DIR) go run ./test/bench -ember $(CURDIR)/bin/ember -templates $(TEST_TEMPLATES) -slot-first $(BENCH_SLOTS)

## bench-files: file upload and download throughput against exec's stdin and
## stdout, the daemon's memory during a big download, PTY echo latency
bench-files: deps build template
	go run ./test/benchfiles -ember $(CURDIR)/bin/ember -templates $(TEST_TEMPLATES)

## bench-network: slot setup vs the ip/iptables way, pool Get, growth
bench-network: deps
	go run ./test/benchnet

## bench-rootfs: Prepare time vs image size and vs a full copy, per backend
bench-rootfs: deps
	go run ./test/benchrootfs -dir /var/tmp

## bench-snapshot: pause, resume and create-from-snapshot against a cold boot
bench-snapshot: deps build template
	go run ./test/benchsnapshot -ember $(CURDIR)/bin/ember -templates $(TEST_TEMPLATES)

## bench-e2b: E2B SDK create → first commands.run against the same flow
## through the Go SDK, alternating, over 10 sandboxes each
bench-e2b: deps build
	EMBER_CACHE_DIR=$(CACHE_DIR) go run ./test/benche2b -ember $(CURDIR)/bin/ember -e2b $(CURDIR)/test/e2b

# The host interface toward the Debian mirror, which template builds'
# apt-get reaches (the default route's).
UPLINK ?= $(shell ip route show default 2>/dev/null | awk '{print $$5; exit}')

## bench-templates: cold build of the code preset, a rebuild with only its
## last step changed against it, create→first exec from code against base
bench-templates: deps build template
	EMBER_CACHE_DIR=$(CACHE_DIR) go run ./test/benchtemplates -ember $(CURDIR)/bin/ember -templates $(TEST_TEMPLATES) -uplink $(UPLINK)

## test-templates: the template tests that install packages from the
## Debian mirror (minutes under TCG; make test runs the others)
test-templates: deps build template
	$(TEST_ENV) EMBER_TEST_APT=1 EMBER_TEST_UPLINK=$(UPLINK) go test -race -count=1 -timeout 40m -v -run TestTemplatePython ./test/e2e

## bench-uffd: the UFFD page server against read(2), 4 KiB and 2 MiB pages
bench-uffd: deps
	go run ./test/benchuffd

## bench-density: 100 idle sandboxes of 128 MiB from one template: host
## memory per sandbox against guest RAM, the daemon's memory, every one's
## exec within a second, then the disk each takes paused (minutes under TCG;
## make test runs a five-sandbox version, TestIdleDensityShort)
DENSITY_N     ?= 100
DENSITY_SLOTS ?= 6400
bench-density: deps build template
	go run ./test/benchdensity -ember $(CURDIR)/bin/ember -templates $(TEST_TEMPLATES) -n $(DENSITY_N) -slot-first $(DENSITY_SLOTS)

# Where `make install` puts ember. DESTDIR stages a package; the test of
# install sets the directories themselves, so the unit's paths are real.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= /etc/systemd/system
SYSTEM_UNITDIR := $(filter /etc/systemd/system,$(DESTDIR)$(UNITDIR))

## install: ember in BINDIR, the systemd unit (ember.service) and a default
## config (SYSCONFDIR/ember/ember.toml, kept when present); idempotent
install: build
	install -D -m 0755 bin/ember $(DESTDIR)$(BINDIR)/ember
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/ember $(DESTDIR)$(UNITDIR)
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/ember/ember.toml ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/ember/ember.toml"; \
	else \
		install -m 0644 dist/ember.toml $(DESTDIR)$(SYSCONFDIR)/ember/ember.toml; \
	fi
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' dist/ember.service > $(DESTDIR)$(UNITDIR)/ember.service.tmp
	chmod 0644 $(DESTDIR)$(UNITDIR)/ember.service.tmp
	mv $(DESTDIR)$(UNITDIR)/ember.service.tmp $(DESTDIR)$(UNITDIR)/ember.service
	@if [ -n "$(SYSTEM_UNITDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed: start it with systemctl enable --now ember; upgrade with make install && systemctl restart ember"

## uninstall: remove what install put (the config only if unchanged); the
## data stays unless PURGE=1, which also removes DATA_DIR and the config
uninstall:
	@if [ -n "$(SYSTEM_UNITDIR)" ] && [ -d /run/systemd/system ] && systemctl is-enabled -q ember 2>/dev/null; then \
		systemctl disable --now ember; \
		echo "stopped ember: the sandboxes' VMMs keep running until destroyed (ember rm before uninstalling)"; \
	fi
	rm -f $(DESTDIR)$(BINDIR)/ember $(DESTDIR)$(UNITDIR)/ember.service
	@if [ -n "$(SYSTEM_UNITDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@if [ "$(PURGE)" = 1 ]; then \
		rm -rf $(DESTDIR)$(SYSCONFDIR)/ember $(DESTDIR)$(DATA_DIR); \
		echo "removed $(DESTDIR)$(SYSCONFDIR)/ember and $(DESTDIR)$(DATA_DIR)"; \
	else \
		if cmp -s dist/ember.toml $(DESTDIR)$(SYSCONFDIR)/ember/ember.toml; then rm -f $(DESTDIR)$(SYSCONFDIR)/ember/ember.toml; fi; \
		rmdir $(DESTDIR)$(SYSCONFDIR)/ember 2>/dev/null || true; \
		echo "kept $(DESTDIR)$(DATA_DIR) and any changed config (PURGE=1 removes them)"; \
	fi

## soak: SOAK_CYCLES create → exec → destroy cycles against one daemon, with
## the growth of its fds, RSS, goroutines, disk and netns (make test runs 50)
SOAK_CYCLES ?= 1000
soak: deps build template
	$(TEST_ENV) EMBER_SOAK_CYCLES=$(SOAK_CYCLES) go test -count=1 -timeout 0 -v -run '^TestSoak$$' ./test/e2e

## fuzz: run every fuzz target for FUZZTIME each (make test runs their seeds)
FUZZTIME ?= 30s
fuzz:
	@set -e; for pkg in $$(go list ./...); do \
		for target in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$target ($(FUZZTIME))"; \
			go test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

## proto: regenerate the agent's Go code from its .proto files
proto:
	internal/agent/proto/generate.sh

clean:
	rm -rf bin internal/template/agentbin/ember-agent $(WEB_ASSETS)
