#!/usr/bin/env bash
# `make demo`: the research agent on the embedded default (a private Postgres; no cluster),
# carried on by the local server. A crash is injected inside the "draft" step, the run waits for
# a person's approval (its process exits meanwhile), is approved, and completes. The ledger then
# shows every LLM call was paid once.
set -euo pipefail
cd "$(dirname "$0")/../.."

CAIRN=${CAIRN:-target/debug/cairn}
AGENT=${AGENT:-target/debug/agent}
run="research-$(date +%H%M%S)-$$"
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
# The server's flow processes get its environment: set before `cairn dev up`.
export CAIRN_EXAMPLE_LEDGER="$workdir/ledger.tsv" CAIRN_EXAMPLE_CRASH_AT=draft

if "$CAIRN" dev status >/dev/null; then
  echo "A cairn dev server is already up; the demo starts its own (its flows need the demo's" >&2
  echo "environment). Stop yours with \`$CAIRN dev down\`, then run make demo again." >&2
  exit 1
fi
echo "== Starting the local server: cairn dev up"
"$CAIRN" dev up
trap '"$CAIRN" dev down >/dev/null; rm -rf "$workdir"' EXIT

echo "== Submitting run $run (a crash will be injected inside step \"draft\"); cairn dev run follows it"
"$CAIRN" dev run "$AGENT" --flow research --name "$run" --retry-backoff 500ms \
  --input '{"topic": "durable execution for AI agents", "breadth": 3}' >"$workdir/result.json" &
follower=$!

echo "== Waiting until the run asks for approval (its process exits meanwhile)"
"$CAIRN" dev wait "$run" --for created --timeout 120s >/dev/null
"$CAIRN" dev wait "$run" --for waiting --event "approve-$run" --timeout 120s
echo "== From another command while it waits: cairn dev status; cairn dev runs (this run's lines)"
"$CAIRN" dev status
"$CAIRN" dev runs | grep -E "NAMESPACE|$run"
"$CAIRN" dev inspect "$run"

echo "== Approving: cairn dev approve $run"
"$CAIRN" dev approve "$run"
status=0
wait "$follower" || status=$?

echo "== What its first execution printed: cairn dev logs $run --attempt 1 (last lines)"
"$CAIRN" dev logs "$run" --attempt 1 | tail -n 4

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
