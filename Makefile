# capd: run 'make demo' for the seed scenario, 'make check' for every test.
# Both need root (they create cgroups) and Go >= the version in go.mod.
GO  ?= go
BIN ?= bin

.PHONY: all build demo check test-deps test lint fuzz bench clean

all: build

build:
	$(GO) build -o $(BIN)/capd ./cmd/capd
	$(GO) build -o $(BIN)/seed ./examples/seed

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
	$(MAKE) fuzz FUZZTIME=10s

# Fuzz targets, each for FUZZTIME (the test command runs them briefly;
# 'make fuzz FUZZTIME=10m' hunts longer). A crash found is saved under the
# package's testdata/fuzz and becomes a regression test.
FUZZTIME ?= 1m
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRestore$$' -fuzztime $(FUZZTIME) ./agent/

# Benchmarks with their baselines, alternating in one run (see BENCHMARKS.md).
bench:
	./bench/acquire.sh
	./bench/drop-delay.sh
	./bench/hook.sh
	./bench/audit.sh

clean:
	rm -rf $(BIN)
