# slipway: `make` lists the targets.
GO          ?= go
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Where `make run` keeps the embedded default's state (.slipway/) and deployments (deploy/):
# outside the source checkout, so that `go test ./...` never compiles a deployed app and
# `git clean` never deletes one.
RUN_DIR     ?= $(or $(XDG_STATE_HOME),$(HOME)/.local/state)/slipway

.DEFAULT_GOAL := help

# Every parser of untrusted input has a fuzz target: package and target, one pair a line.
FUZZ_TARGETS := \
	./gitserver:FuzzDecodeUpdateRequest ./gitserver:FuzzReadPushOptions ./gitserver:FuzzWaitOption \
	./gitserver:FuzzParseCommand ./gitserver:FuzzShellWordsProblem ./gitserver:FuzzValidateRef \
	./gitserver:FuzzOneLine ./gitserver/internal/pack:FuzzReadObjectHeader \
	./gitserver/internal/pack:FuzzPatchDelta ./gitserver/internal/pack:FuzzTreeChecker \
	./gitserver/internal/pack:FuzzStore ./internal/authkeys:FuzzParse ./internal/reponame:FuzzProblem \
	./configs:FuzzIndexLines ./configs:FuzzParseRecipe
FUZZTIME    ?= 3s

.PHONY: help build run test soak bench bench-smoke lint fmt check fuzz screenshots

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build ./slipway
	$(GO) build -ldflags "$(LDFLAGS)" -o slipway ./cmd/slipway

run: build ## run slipway on its embedded default (127.0.0.1:2222, keys from ~/.ssh, state in RUN_DIR)
	@mkdir -p "$(RUN_DIR)"
	@echo "state and deployments: $(RUN_DIR) (set RUN_DIR to change it)"
	cd "$(RUN_DIR)" && "$(CURDIR)/slipway" serve --log-format console

test: ## run every test, with the race detector (needs git, ssh, ssh-keygen)
	$(GO) test -race -count=1 ./...

screenshots: ## the README's dashboard screenshots, taken by the web-dashboard test (needs chromium)
	SLIPWAY_SCREENSHOTS=$(CURDIR)/internal/web/screenshots $(GO) test -count=1 -run 'TestScripts/web-dashboard$$' ./cmd/slipway

soak: ## the long runs (a 1 GiB zip bomb pushed and cloned, ...); they report figures (go test -v)
	@log=$$(mktemp); $(GO) test -tags soak -count=1 -v -run TestSoak -timeout 60m ./cmd/slipway >$$log 2>&1; \
		status=$$?; grep -E '^(=== RUN|--- |ok|FAIL|PASS)|peak RSS|FAIL:' $$log; rm -f $$log; exit $$status

bench: ## benchmark slipway against git + OpenSSH + a hook, and real Node and Go apps (npm registry, Go module proxy); prints a table, writes BENCHMARKS.md (installs openssh-server, nginx, wrk, npm)
	$(GO) run ./cmd/slipway-bench -out BENCHMARKS.md $(BENCH_FLAGS)

bench-smoke: ## a short benchmark run (small workload, one run, no nginx/wrk)
	$(GO) run ./cmd/slipway-bench -smoke -out /dev/null

lint: ## go vet, gofmt and staticcheck
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...

# Go 1.26's fuzz coordinator can report a bare "context deadline exceeded" as the fuzztime
# ends on a loaded machine, having found nothing (golang/go#75804, fixed in Go 1.27): such a
# run, with no failing input written, is run once more. Any other failure fails at once.
fuzz: ## run every fuzz target for FUZZTIME each (default 3s; CI runs this)
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} ($${t%%:*}, $(FUZZTIME))"; \
		for try in 1 2; do \
			if out=$$($(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s "$${t%%:*}" 2>&1); then break; fi; \
			if [ $$try = 1 ] && echo "$$out" | grep -q 'context deadline exceeded' && \
				! echo "$$out" | grep -qE 'Failing input written|panic:'; then \
				echo "  (golang/go#75804: the fuzztime deadline raced a worker, nothing found; once more)"; continue; fi; \
			echo "$$out"; exit 1; \
		done; \
	done

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

check: lint test ## everything CI runs
