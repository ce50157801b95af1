#!/usr/bin/env bash
# End-to-end tests of `kubectl cairn` on the real cluster (tests/cluster/up.sh): target/release/cairn
# installed as the kubectl plugin `kubectl-cairn` on a temporary PATH, run through kubectl itself,
# against runs in every phase (waiting, succeeded, failed, cancelled, retried). A host operator
# runs them, watching only this test's fresh namespace, with its own Lease and a free port. The
# read API is reached with --api-url (the operator's listen address), and once through the API
# server's service proxy (a selector-less Service in the test namespace pointing at the host).
#
# Each scenario prints PASS/FAIL; the last line is "N passed, M failed".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE=localhost/cairn-agent:kubectl-e2e
NS="kc-e2e-$(date +%s)-$$"
passed=0 failed=0
operator_pid=""
WORK="$(mktemp -d)"
OPLOG="$WORK/operator.log"

finish() {
    local rc=$?
    # FlowRuns carry the operator's finalizer: delete them while it still runs.
    if [[ -n "$operator_pid" ]]; then
        kubectl -n "$NS" delete flowruns --all --timeout=60s >/dev/null 2>&1 || true
        kill "$operator_pid" 2>/dev/null || true
        wait "$operator_pid" 2>/dev/null || true
    fi
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    drop_own_database
    if (( rc != 0 || failed != 0 )); then
        echo "--- operator log (last 40 lines) ---" >&2
        tail -n 40 "$OPLOG" >&2 || true
    fi
    rm -rf "$WORK"
    echo "$passed passed, $failed failed"
    (( failed == 0 && rc == 0 )) || exit 1
}
trap finish EXIT

pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1: $2"; failed=$((failed + 1)); }

# kc ARGS...: `kubectl cairn ARGS -n $NS`; stdout and stderr in $out, the exit code in $rc.
kc() { rc=0; out="$(kubectl cairn "$@" -n "$NS" 2>&1)" || rc=$?; }
# kcj ARGS...: the same with -o json; stdout only in $out (stderr in $err).
kcj() { rc=0; out="$(kubectl cairn "$@" -n "$NS" -o json 2>"$WORK/stderr")" || rc=$?; err="$(cat "$WORK/stderr")"; }
# has TEXT...: $out contains every TEXT.
has() { local t; for t in "$@"; do [[ "$out" == *"$t"* ]] || return 1; done; }
# check NAME RC TEXT...: PASS when the last kc exited RC and printed every TEXT.
check() {
    local name="$1" want="$2"; shift 2
    if [[ "$rc" == "$want" ]] && has "$@"; then pass "$name"; else fail "$name" "exit $rc (want $want); output: $out"; fi
}

kubeconfig="$("$CLUSTER_DIR/up.sh" | tail -n 1)"
# shellcheck disable=SC1091
source "$STATE_DIR/env"
[[ "$KUBECONFIG" == "$kubeconfig" ]] || die "up.sh printed $kubeconfig, env file says $KUBECONFIG"
own_database "${NS//-/_}"

log "building cairn and the example agent"
(cd "$REPO_ROOT" && SQLX_OFFLINE="${SQLX_OFFLINE:-true}" cargo build --release -p cairn-operator -p cairn-example-agent >&2)
"$CLUSTER_DIR/image.sh" "$IMAGE" "$REPO_ROOT/target/release/agent" >/dev/null
kubectl apply -f "$REPO_ROOT/crds/generated/crds.yaml" >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl create namespace "$NS" >/dev/null

# The plugin: the same binary, named kubectl-cairn, on PATH. The operator runs a copy too, so
# that a concurrent build cannot change it under this test.
mkdir -p "$WORK/bin"
cp "$REPO_ROOT/target/release/cairn" "$WORK/cairn"
cp "$REPO_ROOT/target/release/cairn" "$WORK/bin/kubectl-cairn"
export PATH="$WORK/bin:$PATH"
unset CAIRN_OPERATOR_NAMESPACE CAIRN_OPERATOR_SERVICE CAIRN_API_URL
export NO_COLOR=1

# A port nothing listens on, at the node address (the API server's service proxy reaches the
# operator there; it never proxies to loopback).
free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/$NODE_IP/$port") 2>/dev/null; then echo "$port"; return; fi
    done
    die "no free port found on $NODE_IP"
}
PORT="$(free_port)"
API="http://$NODE_IP:$PORT"

log "starting the operator for namespace $NS on $API (log: $OPLOG)"
CAIRN_DATABASE_URL="$CAIRN_CLUSTER_PG_URL" "$WORK/cairn" operator --listen "$NODE_IP:$PORT" \
    --watch-namespaces "$NS" --lease-namespace "$NS" --lease-name "kubectl-cairn-e2e-$$" >"$OPLOG" 2>&1 &
operator_pid=$!
for _ in $(seq 60); do curl -fsS "$API/readyz" >/dev/null 2>&1 && break; sleep 0.5; done

name="kubectl finds the plugin"
if kubectl plugin list 2>/dev/null | grep -q "$WORK/bin/kubectl-cairn"; then pass "$name"; else fail "$name" "$(kubectl plugin list 2>&1)"; fi

# --- the runs: one per phase -------------------------------------------------------------------
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: Flow
metadata: { name: research }
spec:
  image: $IMAGE
  flow: research
  retry: { maxAttempts: 3, backoffSeconds: 1 }
  env: [{ name: CAIRN_EXAMPLE_LLM_MS, value: "20" }]
---
apiVersion: cairn.dev/v1alpha1
kind: Flow
metadata: { name: crashy }
spec:
  image: $IMAGE
  flow: research
  retry: { maxAttempts: 1, backoffSeconds: 1 }
  env:
    - { name: CAIRN_EXAMPLE_CRASH_AT, value: plan }
    - { name: CAIRN_EXAMPLE_LEDGER, value: "-" }
    - { name: CAIRN_EXAMPLE_LLM_MS, value: "20" }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: asks }
spec: { flowRef: research, input: { topic: kubectl plugins, breadth: 2 } }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: emitted }
spec: { flowRef: research, input: { topic: events, breadth: 1 } }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: to-cancel }
spec: { flowRef: research, input: { topic: cancelled work, breadth: 1 } }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: wrong-input }
spec: { flowRef: research, input: { subject: "not the field the flow wants" } }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: crashy }
spec: { flowRef: crashy, input: { topic: retries, breadth: 1 } }
EOF

export CAIRN_API_URL="$API"

kc wait asks --for waiting --event approve-asks --timeout 240s
check "wait --for waiting --event: asks waits for its approval" 0 "asks is Waiting"
kc wait crashy --for failed --timeout 240s
check "wait --for failed: crashy failed after its only attempt crashed" 0 "crashy is Failed"
kc wait wrong-input --for succeeded --timeout 240s
check "wait --for succeeded on a run that fails says it never will (exit 1)" 1 \
    "wrong-input finished as Failed and will never be Succeeded" "topic"
for run in emitted to-cancel; do
    kc wait "$run" --for waiting --timeout 240s
    [[ "$rc" == 0 ]] || fail "wait for $run to wait" "$out"
done
kc wait emitted --for sleeping --timeout 2s
check "wait times out with exit 1, saying where the run is" 1 "timed out after 2s waiting for emitted to be Sleeping" "it is Waiting"

# --- runs ---------------------------------------------------------------------------------------
kc runs
runs_table="$out"
check "runs: a table with phases, waits, costs and children under their parent" 0 \
    NAME PHASE "WAITING FOR" "event approve-asks" "└ asks-" Failed Waiting "\$0."
kcj runs --phase failed
names="$(jq -r '[.runs[].name] | sort | join(",")' <<<"$out" 2>/dev/null || true)"
if [[ "$rc" == 0 && "$names" == "crashy,wrong-input" ]]; then pass "runs --phase failed -o json"; else fail "runs --phase failed -o json" "exit $rc, names '$names': $out $err"; fi
kcj runs --flow crashy
names="$(jq -r '[.runs[] | "\(.name):\(.phase):\(.attempt)"] | join(",")' <<<"$out" 2>/dev/null || true)"
if [[ "$names" == "crashy:Failed:1" ]]; then pass "runs --flow"; else fail "runs --flow" "'$names' $err"; fi
kc runs -A
check "runs -A shows the namespace" 0 NAMESPACE "$NS"

# --- inspect --------------------------------------------------------------------------------------
kc inspect asks
inspect_waiting="$out"
check "inspect: steps, costs, attempts, children and the question with its schema" 0 \
    "Phase:     Waiting" "Question:  Publish the report on" '"type":"boolean"' \
    "kubectl cairn approve asks" STEP plan draft fake-llm-1 "TOKENS IN/OUT" "Totals:" \
    Attempts asks-a1 suspended Children
kcj inspect asks
summary="$(jq -r '[.flowRun.status.phase, .detail.wait.event, (.detail.totals.usd > 0), .detailError] | map(tostring) | join(",")' <<<"$out" 2>/dev/null || true)"
if [[ "$summary" == "Waiting,approve-asks,true,null" ]]; then pass "inspect -o json has the FlowRun and the detail"; else fail "inspect -o json" "'$summary' $err"; fi

# The operator's Service, as the chart would make it, in front of the host operator. The API
# server proxies only to endpoints backed by a pod with that address: a host-network pod on the
# node has the node's address, so a Service selecting it reaches the operator's port there.
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: { name: operator-stand-in, labels: { app: cairn-operator-e2e } }
spec:
  hostNetwork: true
  containers: [{ name: pause, image: "registry.k8s.io/pause:3.10", imagePullPolicy: IfNotPresent }]
---
apiVersion: v1
kind: Service
metadata: { name: cairn-operator }
spec:
  selector: { app: cairn-operator-e2e }
  ports: [{ name: http, port: 80, targetPort: $PORT, protocol: TCP }]
EOF
kubectl -n "$NS" wait pod/operator-stand-in --for=condition=Ready --timeout=60s >/dev/null || true
for _ in $(seq 30); do
    kubectl get --raw "/api/v1/namespaces/$NS/services/cairn-operator:http/proxy/livez" >/dev/null 2>&1 && break
    sleep 1
done
rc=0; out="$(env -u CAIRN_API_URL kubectl cairn inspect asks -n "$NS" --operator-namespace "$NS" 2>&1)" || rc=$?
check "inspect reaches the read API through the API server's service proxy" 0 "Question:" STEP fake-llm-1 asks-a1
rc=0; out="$(env -u CAIRN_API_URL kubectl cairn inspect asks -n "$NS" --operator-namespace "$NS" --operator-service nothing-here 2>&1)" || rc=$?
check "inspect without the read API shows the status and says why the rest is missing" 0 \
    "Phase:     Waiting" "Question:" "warning: steps, attempts and costs are not shown" "nothing-here"

kc inspect nope
check "inspect of an unknown run: exit 2, naming the namespace" 2 "FlowRun \"nope\" not found in namespace \"$NS\""

# --- the read API itself ----------------------------------------------------------------------------
name="the read API lists runs by phase and refuses other namespaces with a JSON 404"
listed="$(curl -fsS "$API/api/v1/namespaces/$NS/runs?phase=failed" | jq -r '[.runs[].name] | sort | join(",")' || true)"
other="$(curl -sS -o "$WORK/other.json" -w '%{http_code}' "$API/api/v1/namespaces/default/runs" || true)"
if [[ "$listed" == "crashy,wrong-input" && "$other" == 404 ]] && jq -e '.error | contains("not managed")' "$WORK/other.json" >/dev/null; then
    pass "$name"
else
    fail "$name" "listed '$listed', other namespace: $other $(cat "$WORK/other.json" 2>/dev/null)"
fi

# --- approve ----------------------------------------------------------------------------------------
kc approve asks --data '"yes"'
check "approve with a payload failing the schema: exit 2, the failing value, nothing created" 2 \
    '"yes" is not of type "boolean"' "nothing was created"
name="a refused approve creates no FlowEvent"
if kubectl -n "$NS" get flowevent approve-asks >/dev/null 2>&1; then fail "$name" "approve-asks exists"; else pass "$name"; fi
kc approve nope
check "approve of an unknown run: exit 2" 2 "FlowRun \"nope\" not found"
kc approve asks --wait --timeout 240s
check "approve --wait: the FlowEvent is created, delivered, and the run resumes" 0 \
    "asks: approved event approve-asks with payload true (FlowEvent approve-asks)" "asks: resumed"
kc wait asks --for succeeded --timeout 240s
check "the approved run succeeds" 0 "asks is Succeeded"
kc approve asks
check "approve of a finished run: exit 1, not waiting" 1 "asks is not waiting for an event: it is Succeeded"
kc inspect asks
inspect_succeeded="$out"
check "inspect of a succeeded run shows its result and the final step" 0 "Phase:     Succeeded" "Result:" final "Finished:"

# --- emit ---------------------------------------------------------------------------------------------
kc emit approve-emitted --data '{"publish": 1}'
check "emit checks the payload against the waiting runs' schema: exit 2" 2 'run "emitted"' "is not of type \"boolean\""
kc emit approve-emitted --data false
check "emit creates the FlowEvent and names the runs waiting for it" 0 "event approve-emitted emitted (FlowEvent approve-emitted); waiting for it: emitted"
kc emit approve-emitted --data false
check "emitting the same event again is a no-op" 0 "was already emitted with this payload"
kc emit approve-emitted --data true
check "emitting it with another payload is refused (write-once): exit 2" 2 "already exists with another payload"
kc wait emitted --for succeeded --timeout 240s
approved="$(kubectl -n "$NS" get fr emitted -o jsonpath='{.status.result.approved}')"
if [[ "$rc" == 0 && "$approved" == false ]]; then pass "the emitted run finishes with the payload it got"; else fail "emitted run" "exit $rc, approved '$approved': $out"; fi
kc emit 'Not_A DNS name' --data 1
check "an event name that is not an object name gets a DNS-safe FlowEvent name" 0 "(FlowEvent not-a-dns-name-"

# --- cancel -------------------------------------------------------------------------------------------
kc cancel to-cancel --wait --timeout 120s
check "cancel --wait ends a waiting run" 0 "cancellation requested" "to-cancel is Cancelled"
kc cancel to-cancel
check "cancel of a finished run says so (exit 0)" 0 "to-cancel already finished as Cancelled; nothing to cancel"
kc retry to-cancel
check "retry refuses a run that did not fail: exit 1" 1 "only a failed run can be retried"

# --- failed, logs, retry ---------------------------------------------------------------------------
kc inspect wrong-input
check "inspect of a failed run shows the error" 0 "Phase:     Failed" "Error:" topic
kc logs crashy
check "logs: a header per attempt and the crash in the log" 0 "── attempt 1 · pod crashy-a1" "CAIRN_EXAMPLE_CRASH_AT=plan: aborting attempt 1"
kc retry crashy --wait --timeout 120s
check "retry --wait: the failed run runs again" 0 "crashy: retry requested (cairn.dev/retry=" "crashy: retried; now"
kc wait crashy --for waiting --event approve-crashy --timeout 240s
check "the retried run gets past the step that crashed" 0 "crashy is Waiting"
kc approve crashy --wait --timeout 240s
[[ "$rc" == 0 ]] || fail "approve crashy" "$out"
kc wait crashy --for succeeded --timeout 240s
check "the retried run succeeds" 0 "crashy is Succeeded"
kcj inspect crashy
summary="$(jq -r '[.detail.attempts[0].outcome, (.detail.attempts | length >= 2), (.flowRun.status.retried != null), (.detail.steps | map(.key) | index("plan") != null)] | map(tostring) | join(",")' <<<"$out" 2>/dev/null || true)"
if [[ "$summary" == "crashed,true,true,true" ]]; then pass "inspect of the retried run: the crashed attempt, then the retry"; else fail "inspect crashy" "'$summary' $err"; fi
kc logs crashy
check "logs of the retried run show every attempt in order" 0 "── attempt 1 · pod crashy-a1" "── attempt 2 · pod crashy-a2"
rc=0; out="$(timeout 120 kubectl cairn logs crashy -f -n "$NS" 2>&1)" || rc=$?
check "logs -f of a finished run prints it and ends" 0 "── attempt 1" "CAIRN_EXAMPLE_CRASH_AT=plan"
kcj logs crashy --attempt 1
lines="$(jq -s 'map(select(.attempt == 1)) | length' <<<"$out" 2>/dev/null || echo 0)"
if [[ "$rc" == 0 && "$lines" -gt 0 ]]; then pass "logs -o json: one object per line"; else fail "logs -o json" "exit $rc, $lines lines: $out $err"; fi

kc runs
runs_final="$out"
check "runs at the end: every phase" 0 Succeeded Failed Cancelled

# What it looked like, for people reading the log.
# shellcheck disable=SC2001
show() { echo "--- $1 ---"; sed 's/^/    /' <<<"$2"; }
show "kubectl cairn runs (while runs waited)" "$runs_table"
show "kubectl cairn inspect asks (waiting)" "$inspect_waiting"
show "kubectl cairn inspect asks (succeeded)" "$inspect_succeeded"
show "kubectl cairn runs (at the end)" "$runs_final"
