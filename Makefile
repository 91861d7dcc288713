# slipway: `make` lists the targets.
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.DEFAULT_GOAL := help

.PHONY: help build run test bench bench-smoke lint fmt check

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build ./slipway
	$(GO) build -ldflags "$(LDFLAGS)" -o slipway ./cmd/slipway

run: build ## run slipway on its embedded default (127.0.0.1:2222, keys from ~/.ssh)
	./slipway serve --log-format console

test: ## run every test, with the race detector (needs git, ssh, ssh-keygen)
	$(GO) test -race -count=1 ./...

bench: ## benchmark slipway against git + OpenSSH + a hook; prints a table, writes BENCHMARKS.md (installs openssh-server, nginx, wrk)
	$(GO) run ./internal/bench -out BENCHMARKS.md $(BENCH_FLAGS)

bench-smoke: ## a short benchmark run (small workload, one run, no nginx/wrk)
	$(GO) run ./internal/bench -smoke -out /dev/null

lint: ## go vet and gofmt
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

check: lint test ## everything CI runs
