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
CAIRN_DATABASE_URL="$CAIRN_CLUSTER_PG_URL" "$REPO_ROOT/target/release/cairn" operator >"$LOG_DIR/operator.log" 2>&1 &
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

name="approving with a FlowEvent resumes the run to Succeeded"
kubectl apply -n "$NS" -f "$REPO_ROOT/examples/agent/k8s/approve.yaml" >/dev/null
if wait_jsonpath fr/research-demo '{.status.phase}' Succeeded 180s; then
    pass "$name"
else
    fail "$name" "status: $(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status}')"
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
