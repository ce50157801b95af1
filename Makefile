# Cairn: `make demo` runs the example on the embedded default; `make test` runs every test.
CARGO ?= cargo
# Queries are checked at compile time against the committed offline data (.sqlx/).
export SQLX_OFFLINE ?= true

.PHONY: build demo test test-core test-cluster lint bench-steps sqlx-prepare

build:
	$(CARGO) build --workspace --all-targets

demo:
	$(CARGO) build -p cairn-operator -p cairn-example-agent
	examples/agent/demo.sh

# Every test: unit tests, integration tests against a real Postgres, and the cluster tests.
test: build test-core test-cluster

test-core:
	$(CARGO) test --workspace

# The real one-node cluster (built on first use): its smoke test, then the operator's end-to-end tests.
test-cluster:
	tests/cluster/smoke-test.sh
	tests/cluster/operator-e2e.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Per-step checkpoint overhead next to a raw INSERT + COMMIT (not a test: prints figures).
bench-steps:
	$(CARGO) build --release -p cairn-bench
	target/release/bench-steps

# After changing SQL or a checked query: regenerate .sqlx/ against a migrated database
# (needs sqlx-cli: `cargo install sqlx-cli --no-default-features --features postgres`).
sqlx-prepare:
	DATABASE_URL=$$(target/debug/cairn dev db-url) SQLX_OFFLINE=false $(CARGO) sqlx prepare --workspace
