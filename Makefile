# Cairn: `make demo` runs the example on the embedded default; `make test` runs every test.
CARGO ?= cargo
# Queries are checked at compile time against the committed offline data (.sqlx/).
export SQLX_OFFLINE ?= true

.PHONY: build demo test test-core test-cluster static-bins lint bench-steps bench-volume sqlx-prepare

build:
	$(CARGO) build --workspace --all-targets

# What `make demo` builds: only its two packages, for a new user. CI passes the workspace's set,
# which `make test` built already (building a subset unifies features differently: a rebuild).
DEMO_BUILD ?= -p cairn-operator -p cairn-example-agent
demo:
	$(CARGO) build $(DEMO_BUILD)
	examples/agent/demo.sh

# Every test: unit tests, integration tests against a real Postgres, and the cluster tests.
test: build test-core test-cluster

test-core:
	tests/install-deps.sh test
	$(CARGO) test --workspace

# The real one-node cluster (built on first use): its smoke test, then the end-to-end tests of the
# operator and of `kubectl cairn` (tests/e2e: ignored by plain `cargo test`, run here with
# --ignored, side by side, each scenario in a namespace of its own), and of the Helm chart.
# The harness runs in debug (`make build` built it); what it runs are the static release binaries
# in the images built from the Dockerfiles.
E2E_THREADS ?= 4
test-cluster: static-bins
	tests/cluster/smoke-test.sh
	$(CARGO) test -p cairn-e2e -- --ignored --test-threads=$(E2E_THREADS)
	tests/cluster/chart-e2e.sh

# The binaries the images hold (./Dockerfile, examples/agent/Dockerfile: FROM scratch, so static):
# the operator, the example agent and the test flows, for musl, without debug info as released.
STATIC_TARGET := $(shell uname -m)-unknown-linux-musl
static-bins:
	tests/install-deps.sh static
	CARGO_PROFILE_RELEASE_STRIP=debuginfo $(CARGO) build --release --locked --target $(STATIC_TARGET) \
		-p cairn-operator -p cairn-example-agent -p cairn-tests --bin cairn --bin agent --bin test-flows

# Style and hygiene: rustfmt, clippy, shellcheck on every script, cargo-deny (licenses,
# banned crates, sources; deny.toml says why advisories are not checked here), checkov on what
# the Helm chart renders (tests/checkov-chart.sh) and actionlint on .github/workflows/.
# The tools install into ~/.cache/cairn on first use (tests/install-deps.sh).
TOOLS_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cairn

lint:
	tests/install-deps.sh lint
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	shellcheck $$(git ls-files '*.sh') .ci/run
	$(CARGO) deny --log-level error check licenses bans sources
	CHECKOV=$(TOOLS_CACHE)/checkov-venv/bin/checkov tests/checkov-chart.sh
	$(TOOLS_CACHE)/bin/actionlint

# Per-step checkpoint overhead next to a raw INSERT + COMMIT (not a test: prints figures).
bench-steps:
	$(CARGO) build --release -p cairn-bench
	target/release/bench-steps

# A simulated week of work (1,000,000 steps) with retention running (cairn.gc every simulated
# hour): table sizes and per-step p50/p99 at 0, 250k, 500k and 1M steps. BENCH_VOLUME_ARGS="--steps N".
bench-volume:
	$(CARGO) build --release -p cairn-bench
	target/release/bench-volume $(BENCH_VOLUME_ARGS)

# After changing SQL or a checked query: regenerate .sqlx/ against a throwaway migrated Postgres.
sqlx-prepare:
	sql/sqlx-prepare.sh

.PHONY: test-chart test-chaos test-upgrade cluster-demo

# Failure tests on the real cluster that take minutes (CI runs them after `make test`): a frozen
# flow process on a silent node, the operator SIGKILLed while it launches 200 runs, and one
# FlowEvent waking all 200 under the running budget.
test-chaos:
	tests/cluster/chaos-e2e.sh

# Upgrade and rollback on the real cluster: the operator, chart and flow images of an earlier
# commit park 20 runs; `helm upgrade` to this tree migrates the schema; every run resumes on the
# image it started with and finishes, nothing paid twice; `helm rollback` runs the old operator
# on the newer schema. The earlier commit's binaries are built once per machine (cached).
test-upgrade:
	tests/cluster/upgrade-e2e.sh

# The Helm chart (charts/cairn) on the real cluster: lint, schema, server dry run, install with the
# operator in-cluster, the example to Succeeded, RBAC, an upgrade changing a CRD, uninstall.
test-chart:
	tests/cluster/chart-e2e.sh

# The example on the real cluster, installed with the Helm chart; left running to explore
# (`tests/cluster/cluster-demo.sh clean` removes it).
cluster-demo:
	tests/cluster/cluster-demo.sh

.PHONY: bench bench-smoke bench-tools

# `make bench`: Cairn next to the physical limit (a raw INSERT + COMMIT on the same Postgres) and
# its peers (Absurd and DBOS, in a private Python environment), figures 1-9: a private Postgres for
# 1-3, the test cluster for 4-9. Prints the Markdown table and writes target/bench/bench.{md,json,png}.
# Takes the better part of an hour; not part of `make test`. `make bench-smoke`: the same with
# small sizes, in a few minutes.
BENCH_VENV := target/bench-venv

$(BENCH_VENV)/.installed: bench/requirements.txt
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

bench-tools: $(BENCH_VENV)/.installed
	$(CARGO) build --release -p cairn-bench -p cairn-operator
	tests/install-deps.sh static
	CARGO_PROFILE_RELEASE_STRIP=debuginfo $(CARGO) build --release --target $(STATIC_TARGET) -p cairn-bench --bin bench-flows

# BENCH_ARGS passes options, e.g. BENCH_ARGS="--local-only" or "--fanout 200" (see --help).
bench: bench-tools
	CAIRN_BENCH_COMMAND="make bench BENCH_ARGS='$(BENCH_ARGS)'" target/release/bench --out target/bench $(BENCH_ARGS)

bench-smoke: bench-tools
	CAIRN_BENCH_COMMAND="make bench-smoke" target/release/bench --smoke --out target/bench-smoke
