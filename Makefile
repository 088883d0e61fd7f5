# spiredb — see `make help`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
GO ?= go
export SPIREDB_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/spiredb
BIN := bin/spiredb
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/spiredb/spiredb/internal/version.Version=$(VERSION)
TEST_TIMEOUT ?= 30m

.PHONY: help setup build image test test-unit bench demo lint fmt fmt-check vet spire-fixture spire-labels docs clean

help: ## list targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## install PostgreSQL (apt) and build versitygw, spire-server and spire-agent into the cache, when missing
	@scripts/setup.sh all

build: ## build bin/spiredb
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/spiredb

image: setup build ## build the container image (deploy/Dockerfile) with podman, no registry: localhost/spiredb:dev
	scripts/image.sh $(BIN) localhost/spiredb:dev

test: setup ## set-up, then unit, integration and SPIRE end-to-end tests (real PostgreSQL, S3, spire-server)
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

test-unit: ## tests that need no external component
	$(GO) test -count=1 ./internal/dsn ./internal/logging

bench: setup build ## benchmarks (see docs/BENCHMARKS.md)
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./...

demo: setup build ## the main job on a throwaway cluster with a SPIRE fixture
	$(GO) run ./scripts/demo -spiredb $(BIN)

lint: ## golangci-lint (v2, built into the cache)
	@scripts/setup.sh lint
	$(SPIREDB_CACHE)/bin/golangci-lint run ./...

fmt: ## gofmt the tree
	gofmt -w $$(git ls-files '*.go')

fmt-check: ## fail when gofmt would change something
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

spire-fixture: setup ## regenerate spire/schema.sql from a real spire-server
	$(GO) run ./scripts/spire-fixture

docs: ## regenerate the CLI reference in docs/cli from the command tree (a test fails when it drifts)
	$(GO) test -count=1 -run TestCLIReference ./cmd/spiredb -update-docs

spire-labels: setup ## regenerate spire/statements.json (SPIRE's statements by operation) from a real spire-server, ~6 min
	$(GO) run ./scripts/spire-labels

clean: ## remove build output
	rm -rf bin
