# capd: run 'make demo' for the seed scenario, 'make check' for every test.
# Both need root (they create cgroups) and Go >= the version in go.mod, on
# PATH or in /usr/local/go/bin (which sudo's PATH lacks).
# 'make install' and 'make deb' are for operators (README, Install).

# Go: GO=..., else go on PATH, else /usr/local/go/bin/go. Its bin directory
# goes first on PATH for everything make runs (scripts, and the tests, which
# run 'go build' and 'go list' themselves).
ifeq ($(origin GO),undefined)
GO := $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
endif
GOROOT_DIR := $(shell $(GO) env GOROOT 2>/dev/null)
ifneq ($(GOROOT_DIR),)
export PATH := $(GOROOT_DIR)/bin:$(PATH)
endif
BIN ?= bin

# Static binaries (CGO_ENABLED=0: /run/capd/capd runs in containers without
# a libc), without build paths, version stamped (scripts/buildflags.sh).
GOBUILD = CGO_ENABLED=0 $(GO) build -trimpath $(BUILDFLAGS)
BUILDFLAGS := $(shell ./scripts/buildflags.sh)

# Installation directories. The units and the hooks.d file name
# $(BINDIR)/capd; the agent reads /etc/capd/capd.toml whatever PREFIX is.
PREFIX      ?= /usr
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
UNITDIR     ?= $(PREFIX)/lib/systemd/system
HOOKSDIR    ?= $(PREFIX)/share/containers/oci/hooks.d
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
CONFDIR     := /etc/capd

.PHONY: all build man completions install deb demo check test-deps test lint fuzz bench clean

all: build

build:
	$(GOBUILD) -o $(BIN)/capd ./cmd/capd
	$(GOBUILD) -o $(BIN)/capd-full ./cmd/capd-full
	$(GOBUILD) -o $(BIN)/capd-nri ./cmd/capd-nri
	$(GOBUILD) -o $(BIN)/seed ./examples/seed

# Man pages (section 1), generated from the command definitions.
man: build
	rm -rf $(BIN)/man
	$(BIN)/capd __gen-man $(BIN)/man

# Shell completions; entry names come from the agent at completion time.
completions: build
	mkdir -p $(BIN)/completions
	$(BIN)/capd completion bash > $(BIN)/completions/capd.bash
	$(BIN)/capd completion zsh > $(BIN)/completions/_capd
	$(BIN)/capd completion fish > $(BIN)/completions/capd.fish

# An existing $(CONFDIR)/capd.toml is the admin's: never overwritten.
install: build man completions
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(HOOKSDIR) $(DESTDIR)$(CONFDIR) \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	install -m 0755 $(BIN)/capd $(DESTDIR)$(BINDIR)/capd
	install -m 0755 $(BIN)/capd-full $(DESTDIR)$(BINDIR)/capd-full
	install -m 0755 $(BIN)/capd-nri $(DESTDIR)$(BINDIR)/capd-nri
	for u in capd.service capd.socket; do \
		sed 's|/usr/bin/capd|$(BINDIR)/capd|g' dist/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	$(BIN)/capd hook install --dir $(DESTDIR)$(HOOKSDIR) --path $(BINDIR)/capd >/dev/null
	[ -e $(DESTDIR)$(CONFDIR)/capd.toml ] || install -m 0644 dist/capd.toml $(DESTDIR)$(CONFDIR)/capd.toml
	install -m 0644 $(BIN)/man/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 $(BIN)/completions/capd.bash $(DESTDIR)$(BASHCOMPDIR)/capd
	install -m 0644 $(BIN)/completions/_capd $(DESTDIR)$(ZSHCOMPDIR)/_capd
	install -m 0644 $(BIN)/completions/capd.fish $(DESTDIR)$(FISHCOMPDIR)/capd.fish

# $(BIN)/capd_VERSION_ARCH.deb, from 'make install' into a staging tree.
deb: build man completions
	BIN=$(BIN) GO=$(GO) MAKE=$(MAKE) ./scripts/build-deb.sh

# The seed scenario, narrated: rpm-ostreed.service publishes, zincati.service
# acquires, the token comes back and verifies, then is revoked.
demo: build
	$(BIN)/seed -capd $(BIN)/capd

# Install what the tests need, then run all of them.
check: test-deps test

test-deps:
	./scripts/install-test-deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...

test: lint
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz FUZZTIME=20000x

# Fuzz targets, each for FUZZTIME (the test command runs 20,000 inputs of
# each, some seconds: a count, as Go 1.26's -fuzztime DURATION can end in a
# spurious "context deadline exceeded";
# 'make fuzz FUZZTIME=10m' hunts longer). A crash found is saved under the
# package's testdata/fuzz and becomes a regression test.
FUZZTIME ?= 1m
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRestore$$' -fuzztime $(FUZZTIME) ./agent/internal/persist/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeJournal$$' -fuzztime $(FUZZTIME) ./agent/internal/persist/
	$(GO) test -run '^$$' -fuzz '^FuzzParseHeader$$' -fuzztime $(FUZZTIME) ./internal/proto/
	$(GO) test -run '^$$' -fuzz '^FuzzAttrs$$' -fuzztime $(FUZZTIME) ./internal/proto/
	$(GO) test -run '^$$' -fuzz '^FuzzParseRights$$' -fuzztime $(FUZZTIME) ./internal/fdpass/
	$(GO) test -run '^$$' -fuzz '^FuzzRecv$$' -fuzztime $(FUZZTIME) ./internal/fdpass/
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) ./agent/policy/
	$(GO) test -run '^$$' -fuzz '^FuzzPattern$$' -fuzztime $(FUZZTIME) ./agent/policy/
	$(GO) test -run '^$$' -fuzz '^FuzzReadState$$' -fuzztime $(FUZZTIME) ./oci/
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./oci/
	$(GO) test -run '^$$' -fuzz '^FuzzParseHead$$' -fuzztime $(FUZZTIME) ./agent/internal/metrics/

# Benchmarks with their baselines, alternating in one run (see BENCHMARKS.md).
bench:
	./bench/acquire.sh
	./bench/idle.sh
	./bench/oneshot.sh
	./bench/publish.sh
	./bench/entries.sh
	./bench/persist.sh
	./bench/drop-delay.sh
	./bench/hook.sh
	./bench/audit.sh
	./bench/audit-few.sh
	./bench/k8s.sh
	./bench/bpflsm.sh

clean:
	rm -rf $(BIN)
