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

# Templates built for the test tiers live in the cache, outside the clone.
TEST_TEMPLATES := $(CACHE_DIR)/test-templates

# Debian packages the daemon, the template build and the tests need.
APT_PACKAGES := qemu-system-x86 qemu-utils e2fsprogs busybox-static \
	linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev \
	cpio xz-utils dwarves kmod nftables iproute2 procps iptables \
	dmsetup xfsprogs btrfs-progs chromium
# Node.js and npm (for the protocol test's npm package) come from Debian only
# when the machine has none: a Node.js installed another way ships its own
# npm, which Debian's npm package would conflict with.
NODE_PACKAGES := $(if $(shell command -v npm),,nodejs npm)

# CI forbids skipping a test for a missing prerequisite (KVM excepted).
ifeq ($(CI),true)
export EMBER_REQUIRE_ALL := 1
endif

GO_SOURCES := $(shell find cmd internal client -name '*.go' -o -name '*.yaml' -o -name '*.config' -o -name '*.proto' 2>/dev/null)

.PHONY: all deps apt npm vmm-user fuzz soak build run test check test-host template bench bench-network bench-rootfs bench-snapshot bench-uffd proto clean

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
# Chromium with playwright-core. Both are pinned by their lock files.
npm: test/e2b/node_modules/.package-lock.json test/browser/node_modules/.package-lock.json

%/node_modules/.package-lock.json: %/package.json %/package-lock.json
	npm ci --prefix $* --no-audit --no-fund --loglevel=error
	@touch $@

## build: bin/ember, which carries the guest agent
build: bin/ember

bin/ember-agent: $(GO_SOURCES) go.mod go.sum
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $@ ./cmd/ember-agent

internal/template/agentbin/ember-agent: bin/ember-agent
	cp $< $@

bin/ember: internal/template/agentbin/ember-agent $(GO_SOURCES) go.mod go.sum
	go build -trimpath -ldflags "-X main.version=$(VERSION)" -o $@ ./cmd/ember

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
	$(TEST_ENV) go test -race -count=1 -timeout 20m $$(go list ./... | grep -v -e /test/e2e -e /test/browser)
	$(TEST_ENV) go test -race -count=1 -timeout 20m -v ./test/e2e
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

## bench: create→first-exec latency, destroy latency and the phase breakdown
bench: deps build template
	EMBER_CACHE_DIR=$(CACHE_DIR) go run ./test/bench -ember $(CURDIR)/bin/ember -templates $(TEST_TEMPLATES)

## bench-network: slot setup vs the ip/iptables way, pool Get, growth
bench-network: deps
	go run ./test/benchnet

## bench-rootfs: Prepare time vs image size and vs a full copy, per backend
bench-rootfs: deps
	go run ./test/benchrootfs -dir /var/tmp

## bench-snapshot: pause, resume and create-from-snapshot against a cold boot
bench-snapshot: deps build template
	go run ./test/benchsnapshot -ember $(CURDIR)/bin/ember -templates $(TEST_TEMPLATES)

## bench-uffd: the UFFD page server against read(2), 4 KiB and 2 MiB pages
bench-uffd: deps
	go run ./test/benchuffd

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
	rm -rf bin internal/template/agentbin/ember-agent
