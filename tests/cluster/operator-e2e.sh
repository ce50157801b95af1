#!/usr/bin/env bash
# End-to-end tests of the operator on the real cluster (tests/cluster/up.sh). The operator runs as
# a host process with the admin kubeconfig (the Helm chart comes later), against the cluster's
# Postgres; flow pods reach that Postgres at the bridge address.
#
# Each scenario prints PASS/FAIL; the last line is "N passed, M failed".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE=localhost/cairn-agent:dev
NS="e2e-$(date +%s)"
passed=0 failed=0
operator_pid=""

finish() {
    local rc=$?
    [[ -n "$operator_pid" ]] && kill "$operator_pid" 2>/dev/null || true
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    (( rc == 0 && failed == 0 )) || { echo "--- operator log (last 40 lines) ---" >&2; tail -n 40 "$LOG_DIR/operator.log" >&2 || true; }
    echo "$passed passed, $failed failed"
    (( failed == 0 && rc == 0 )) || exit 1
}
trap finish EXIT

pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1: $2"; failed=$((failed + 1)); }

# wait_jsonpath KIND/NAME JSONPATH VALUE TIMEOUT: kubectl's own wait (a watch, not a poll loop).
wait_jsonpath() {
    kubectl -n "$NS" wait "$1" --for=jsonpath="$2"="$3" --timeout="$4" >/dev/null 2>&1
}

kubeconfig="$("$CLUSTER_DIR/up.sh" | tail -n 1)"
# shellcheck disable=SC1091
source "$STATE_DIR/env"
[[ "$KUBECONFIG" == "$kubeconfig" ]] || die "up.sh printed $kubeconfig, env file says $KUBECONFIG"

log "building the operator and the example agent"
(cd "$REPO_ROOT" && cargo build --release -p cairn-operator -p cairn-example-agent >&2)
"$CLUSTER_DIR/image.sh" "$IMAGE" "$REPO_ROOT/target/release/agent" >/dev/null
kubectl apply -f "$REPO_ROOT/crds/generated/crds.yaml" >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl create namespace "$NS" >/dev/null

log "starting the operator (log: $LOG_DIR/operator.log)"
ENDPOINTS=127.0.0.1:18080
CAIRN_DATABASE_URL="$CAIRN_CLUSTER_PG_URL" "$REPO_ROOT/target/release/cairn" operator --listen "$ENDPOINTS" >"$LOG_DIR/operator.log" 2>&1 &
operator_pid=$!

# --- the example: runs, waits with no pod running, is approved, succeeds -----------------------
kubectl apply -n "$NS" -f "$REPO_ROOT/examples/agent/k8s/flow.yaml" >/dev/null
kubectl apply -n "$NS" -f "$REPO_ROOT/examples/agent/k8s/flowrun.yaml" >/dev/null
name="example FlowRun waits for approval with no pod running"
if wait_jsonpath fr/research-demo '{.status.waitingFor.event}' approve-research-demo 180s; then
    run_pods="cairn.dev/run=$(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status.runId}')"
    # The suspended attempt's process exits 0 right after parking; give the kubelet a moment.
    kubectl -n "$NS" wait pods -l "$run_pods" --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null || true
    running=$(kubectl -n "$NS" get pods -l "$run_pods" --field-selector=status.phase!=Succeeded -o name | wc -l)
    children=$(kubectl -n "$NS" get fr -l cairn.dev/parent=research-demo -o name | wc -l)
    if [[ "$running" == 0 && "$children" == 3 ]]; then pass "$name"; else fail "$name" "$running pods not finished, $children child FlowRuns"; fi
else
    fail "$name" "status: $(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status}')"
fi

name="ResourceProfile requests reach the flow pod"
requests=$(kubectl -n "$NS" get pods -l "cairn.dev/run=$(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status.runId}')" \
    -o jsonpath='{.items[0].spec.containers[0].resources.requests.cpu}')
if [[ "$requests" == 50m ]]; then pass "$name"; else fail "$name" "cpu request '$requests'"; fi

# While it waits, the tag moves to a different image: the run must stay on the digest it began with.
first_image=$(kubectl -n "$NS" get pod research-demo-a1 -o jsonpath='{.status.containerStatuses[0].imageID}')
moved=$("$CLUSTER_DIR/image.sh" "$IMAGE" "$REPO_ROOT/target/release/agent" --label variant=moved | sed -n 's/^manifest_digest=//p')

name="approving with a FlowEvent resumes the run to Succeeded"
kubectl apply -n "$NS" -f "$REPO_ROOT/examples/agent/k8s/approve.yaml" >/dev/null
if wait_jsonpath fr/research-demo '{.status.phase}' Succeeded 180s; then
    pass "$name"
else
    fail "$name" "status: $(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status}')"
fi

name="the resumed pod runs the digest the run started with, not the moved tag"
last=$(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status.pod}')
kubectl -n "$NS" wait pod "$last" --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null || true
last_spec=$(kubectl -n "$NS" get pod "$last" -o jsonpath='{.spec.containers[0].image}')
last_image=$(kubectl -n "$NS" get pod "$last" -o jsonpath='{.status.containerStatuses[0].imageID}')
if [[ -n "$first_image" && -n "$moved" && "$last_spec" == "$first_image" && "$last_image" == "$first_image" && "$last_image" != *"$moved"* ]]; then
    pass "$name"
else
    fail "$name" "first $first_image; last pod $last asked for $last_spec, ran $last_image; the tag is now $moved"
fi

# --- bad input is reported, not crash-looped ------------------------------------------------
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: no-such-flow }
spec: { flowRef: missing }
EOF
name="a FlowRun naming an unknown Flow gets a condition saying so"
if wait_jsonpath fr/no-such-flow '{.status.conditions[0].reason}' FlowNotFound 60s; then
    pass "$name"
else
    fail "$name" "status: $(kubectl -n "$NS" get fr no-such-flow -o jsonpath='{.status}')"
fi

name="the API server refuses a FlowRun with both flowRef and image (CEL)"
if out=$(kubectl apply -n "$NS" -f - 2>&1 <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: both }
spec: { flowRef: research, image: "localhost/other:1", flow: "summarize" }
EOF
); then fail "$name" "accepted"; elif grep -q "set either spec.flowRef" <<<"$out"; then pass "$name"; else fail "$name" "$out"; fi

# --- crashes: every child aborts inside its LLM step once; nothing paid is paid twice -----------
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: Flow
metadata: { name: crashy }
spec:
  image: $IMAGE
  flow: research
  retry: { maxAttempts: 3, backoffSeconds: 1 }
  env:
    - { name: CAIRN_EXAMPLE_CRASH_AT, value: summarize }
    - { name: CAIRN_EXAMPLE_LEDGER, value: "-" }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: crashy }
spec:
  flowRef: crashy
  input: { topic: crash recovery, breadth: 2 }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowEvent
metadata: { name: approve-crashy }
spec: { event: approve-crashy, payload: true }
EOF
name="crashed pods are relaunched and no LLM call is paid twice"
if wait_jsonpath fr/crashy '{.status.phase}' Succeeded 180s; then
    # The run can be over before the kubelet reports its last pod's end; logs come after that.
    pods=$(kubectl -n "$NS" get pods -o name | grep '/crashy')
    for pod in $pods; do
        kubectl -n "$NS" wait "$pod" --for=jsonpath='{.status.containerStatuses[0].state.terminated}' --timeout=60s >/dev/null || true
    done
    ledger=$(for pod in $pods; do kubectl -n "$NS" logs "$pod"; done | grep $'^ledger\t' || true)
    crashes=$(grep -c $'^ledger\tcrash' <<<"$ledger" || true)
    replayed=$(grep -c $'^ledger\treplayed' <<<"$ledger" || true)
    paid=$(grep -c $'^ledger\tpaid' <<<"$ledger" || true)
    paid_twice=$(awk -F'\t' '$2 == "paid" { n[$3 "/" $4]++ } END { t = 0; for (k in n) if (n[k] > 1) t++; print t }' <<<"$ledger")
    # plan, 2 summaries, draft, final: 5 calls paid once each; each child crashed once; the
    # approval was emitted before the wait, so only the parent's second attempt replays (plan).
    if [[ "$crashes" == 2 && "$paid_twice" == 0 && "$replayed" -gt 0 && "$paid" == 5 ]]; then
        pass "$name ($paid paid, $replayed replayed, $crashes crashes)"
    else
        fail "$name" "paid $paid, paid twice $paid_twice, replayed $replayed, crashes $crashes; ledger: $(tr '\n\t' '| ' <<<"$ledger")"
    fi
else
    fail "$name" "status: $(kubectl -n "$NS" get fr crashy -o jsonpath='{.status}')"
fi

# --- cancel a waiting run ------------------------------------------------------------------------
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: to-cancel }
spec: { flowRef: research, input: { topic: cancelled work, breadth: 1 } }
EOF
name="cancelling a waiting run ends it with no pod left running"
if wait_jsonpath fr/to-cancel '{.status.waitingFor.event}' approve-to-cancel 180s &&
    kubectl -n "$NS" patch fr to-cancel --type merge -p '{"spec":{"cancel":true}}' >/dev/null &&
    wait_jsonpath fr/to-cancel '{.status.phase}' Cancelled 60s; then
    run_pods="cairn.dev/run=$(kubectl -n "$NS" get fr to-cancel -o jsonpath='{.status.runId}')"
    kubectl -n "$NS" wait pods -l "$run_pods" --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null || true
    running=$(kubectl -n "$NS" get pods -l "$run_pods" --field-selector=status.phase=Running -o name | wc -l)
    if [[ "$running" == 0 ]]; then pass "$name"; else fail "$name" "$running pods running"; fi
else
    fail "$name" "status: $(kubectl -n "$NS" get fr to-cancel -o jsonpath='{.status}')"
fi

# --- deleting a run deletes its rows -----------------------------------------------------------
name="deleting a FlowRun deletes its runs, children included, from the database"
kubectl -n "$NS" delete fr research-demo --timeout=60s >/dev/null
rows=$(psql "$CAIRN_CLUSTER_PG_URL" -tAc "SELECT count(*) FROM cairn.runs WHERE namespace = '$NS' AND name LIKE 'research-demo%'")
if [[ "$rows" == 0 ]]; then pass "$name"; else fail "$name" "$rows rows left"; fi

# --- bad runs fail with a clear message, without a crash loop ------------------------------------
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: no-such-image }
spec:
  image: localhost/no-such-image:1
  flow: research
  input: { topic: x }
  retry: { maxAttempts: 2, backoffSeconds: 1 }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: wrong-input }
spec:
  image: $IMAGE
  flow: research
  input: { subject: "not the field the flow wants" }
EOF
name="an image that does not exist fails the run after its attempts, naming the pull error"
if wait_jsonpath fr/no-such-image '{.status.phase}' Failed 180s; then
    error=$(kubectl -n "$NS" get fr no-such-image -o jsonpath='{.status.error}')
    if [[ "$error" == *ImagePull* ]]; then pass "$name"; else fail "$name" "error '$error'"; fi
else
    fail "$name" "status: $(kubectl -n "$NS" get fr no-such-image -o jsonpath='{.status}')"
fi
name="input that does not match the flow's type fails the run once, naming the field"
if wait_jsonpath fr/wrong-input '{.status.phase}' Failed 120s; then
    error=$(kubectl -n "$NS" get fr wrong-input -o jsonpath='{.status.error}')
    attempt=$(kubectl -n "$NS" get fr wrong-input -o jsonpath='{.status.attempt}')
    if [[ "$error" == *topic* && "$attempt" == 1 ]]; then pass "$name"; else fail "$name" "attempt $attempt, error '$error'"; fi
else
    fail "$name" "status: $(kubectl -n "$NS" get fr wrong-input -o jsonpath='{.status}')"
fi

# --- restarting the operator mid-run loses nothing and duplicates nothing ----------------------
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: restarted }
spec: { flowRef: research, input: { topic: operator restarts, breadth: 2 } }
EOF
kubectl -n "$NS" wait pod/restarted-a1 --for=create --timeout=60s >/dev/null 2>&1 || true
kill "$operator_pid"
wait "$operator_pid" 2>/dev/null || true
CAIRN_DATABASE_URL="$CAIRN_CLUSTER_PG_URL" "$REPO_ROOT/target/release/cairn" operator --listen "$ENDPOINTS" >>"$LOG_DIR/operator.log" 2>&1 &
operator_pid=$!
name="after an operator restart the run carries on with one pod per attempt"
if wait_jsonpath fr/restarted '{.status.waitingFor.event}' approve-restarted 180s; then
    attempt=$(kubectl -n "$NS" get fr restarted -o jsonpath='{.status.attempt}')
    run_id=$(kubectl -n "$NS" get fr restarted -o jsonpath='{.status.runId}')
    pods=$(kubectl -n "$NS" get pods -l "cairn.dev/run=$run_id" -o name | wc -l)
    if [[ "$pods" == "$attempt" ]]; then pass "$name"; else fail "$name" "$pods pods for $attempt attempts"; fi
else
    fail "$name" "status: $(kubectl -n "$NS" get fr restarted -o jsonpath='{.status}')"
fi

# --- health and metrics ---------------------------------------------------------------------
name="the operator serves /livez, /readyz and /metrics with run counts and launches"
livez=$(curl -fsS "http://$ENDPOINTS/livez" || true)
readyz=$(curl -fsS "http://$ENDPOINTS/readyz" || true)
metrics=$(curl -fsS "http://$ENDPOINTS/metrics" || true)
launches=$(sed -n 's/^cairn_pod_launches_total \([0-9]*\).*/\1/p' <<<"$metrics")
if [[ "$livez" == ok && "$readyz" == ok && "$metrics" == *'cairn_runs{phase="succeeded"}'* && "${launches:-0}" -gt 0 ]]; then
    pass "$name"
else
    fail "$name" "livez '$livez', readyz '$readyz', launches '$launches' since the restart"
fi
