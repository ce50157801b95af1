#!/usr/bin/env bash
# `make lint`: checkov (an outside policy checker, installed by tests/install-deps.sh lint) scans
# what the Helm chart renders: with the defaults, with ci/test-values.yaml (NetworkPolicy, PDB,
# ServiceMonitor, a runner URL), with the migration Job, and with values-production.yaml.
# Every check must pass; the ones the chart does not meet on purpose are skipped by
# `checkov.io/skipN` annotations next to the objects they concern, each with its reason
# (templates/deployment.yaml, templates/migrate-job.yaml).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
chart=charts/cairn
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cairn"
checkov="${CHECKOV:-$cache/checkov-venv/bin/checkov}"
[[ -x "$checkov" ]] || { echo "no checkov at $checkov: run tests/install-deps.sh lint" >&2; exit 1; }
# helm: on PATH, else the test cluster's build (the newest), else the one install-deps.sh built.
helm="$(command -v helm || true)"
if [[ -z "$helm" ]]; then
    built=("$cache"/cluster/helm-*/helm)
    helm="${built[-1]}"
    [[ -x "$helm" ]] || helm="$cache/bin/helm"
fi
[[ -x "$helm" ]] || { echo "no helm on PATH nor at $helm: run tests/install-deps.sh lint" >&2; exit 1; }

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$helm" template cairn "$chart" -n cairn-system --set database.url=postgres://u:p@h/db >"$out/defaults.yaml"
"$helm" template cairn "$chart" -n cairn-system -f "$chart/ci/test-values.yaml" >"$out/test-values.yaml"
"$helm" template cairn "$chart" -n cairn-system --set database.existingSecret=cairn-db \
    --set migrations.mode=job >"$out/migrate-job.yaml"
"$helm" template cairn "$chart" -n cairn-system -f "$chart/values-production.yaml" >"$out/values-production.yaml"
# One scan per rendering: checkov relates objects across the files of one scan (a NetworkPolicy
# in one rendering would count for the pods of another). --skip-download: no calls to Prisma
# Cloud (the checks ship with checkov).
status=0
for rendering in "$out"/*.yaml; do
    echo "checkov: charts/cairn with $(basename "$rendering" .yaml)"
    "$checkov" --framework kubernetes --file "$rendering" --skip-download --quiet --compact || status=1
done
[[ $status -eq 0 ]] || echo "checkov failed: fix the chart, or skip the check with a reason (see $0)" >&2
exit "$status"
