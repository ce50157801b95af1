#!/usr/bin/env bash
# `make demo`: the research agent on the embedded default (a private Postgres; no cluster).
# A crash is injected inside the "draft" step, the run waits for a person's approval, the
# approval is emitted, and the run completes. The ledger then shows every LLM call was paid once.
set -euo pipefail
cd "$(dirname "$0")/../.."

CAIRN=${CAIRN:-target/debug/cairn}
AGENT=${AGENT:-target/debug/agent}
run="research-$(date +%H%M%S)-$$"
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
export CAIRN_EXAMPLE_LEDGER="$workdir/ledger.tsv" CAIRN_EXAMPLE_CRASH_AT=draft

echo "== Starting run $run (a crash will be injected inside step \"draft\")"
"$CAIRN" dev run "$AGENT" --flow research --name "$run" --retry-backoff 500ms \
  --input '{"topic": "durable execution for AI agents", "breadth": 3}' >"$workdir/result.json" &
supervisor=$!

echo "== Waiting until the run asks for approval (its process exits meanwhile)"
"$CAIRN" dev wait "$run" --for created --timeout 120s >/dev/null
"$CAIRN" dev wait "$run" --for waiting --event "approve-$run" --timeout 120s
"$CAIRN" dev inspect "$run"

echo "== Approving: cairn dev emit approve-$run --data true"
"$CAIRN" dev emit "approve-$run" --data true
status=0
wait "$supervisor" || status=$?

echo "== Result (the last line \`cairn dev run\` printed)"
tail -n 1 "$workdir/result.json"
echo
echo "== What was paid for"
awk -F'\t' '
  $1 == "paid"     { paid++; cost += $4; seen[$2 "/" $3]++ }
  $1 == "replayed" { replayed++ }
  $1 == "crash"    { crashes++ }
  END {
    twice = 0; for (k in seen) if (seen[k] > 1) twice++
    printf "LLM calls paid:       %d (paid twice: %d)\n", paid, twice
    printf "replayed from checkpoints: %d\n", replayed
    printf "crashes injected:     %d\n", crashes
    printf "cost of the run:      $%.4f\n", cost
    if (twice > 0) exit 1
  }' "$CAIRN_EXAMPLE_LEDGER"
exit "$status"
