#!/usr/bin/env bash
# End-to-end tests of the operator on the real cluster (tests/cluster/up.sh). The operator runs as
# a host process with the admin kubeconfig (the Helm chart comes later), against the cluster's
# Postgres; flow pods reach that Postgres at the bridge address.
#
# Each scenario prints PASS/FAIL; the last line is "N passed, M failed".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"

IMAGE=localhost/cairn-agent:dev
NS="e2e-$(date +%s)"
operator_pid="" standby_pid=""
# Cluster-scoped, so named for this run (the Helm chart installs its own `small`).
PROFILE="small-$NS"

finish() {
    local rc=$?
    # Runs first, while an operator still runs their finalizers (and deletes their rows); a
    # namespace holding FlowRuns nobody finalizes would stay Terminating.
    kubectl -n "$NS" delete flowruns --all --timeout=60s >/dev/null 2>&1 || true
    if [[ -n "$operator_pid" ]]; then kill "$operator_pid" 2>/dev/null || true; fi
    if [[ -n "$standby_pid" ]]; then kill "$standby_pid" 2>/dev/null || true; fi
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    kubectl delete resourceprofile "$PROFILE" --wait=false >/dev/null 2>&1 || true
    drop_own_database
    e2e_summary "$rc" "$LOG_DIR/operator.log"
}
trap finish EXIT

e2e_setup

log "building the operator and the example agent"
(cd "$REPO_ROOT" && cargo build --release -p cairn-operator -p cairn-example-agent >&2)
"$CLUSTER_DIR/image.sh" "$IMAGE" "$REPO_ROOT/target/release/agent" >/dev/null

log "starting the operator (log: $LOG_DIR/operator.log)"
ENDPOINTS=127.0.0.1:18080
: >"$LOG_DIR/operator.log"
start_operator "$ENDPOINTS" "$LOG_DIR/operator.log"
operator_pid=$!

# --- the example: runs, waits with no pod running, is approved, succeeds -----------------------
sed "s/name: small/name: $PROFILE/" "$REPO_ROOT/examples/agent/k8s/profile.yaml" | kubectl apply -f - >/dev/null
sed "s/profile: small/profile: $PROFILE/" "$REPO_ROOT/examples/agent/k8s/flow.yaml" | kubectl apply -n "$NS" -f - >/dev/null
kubectl apply -n "$NS" -f "$REPO_ROOT/examples/agent/k8s/flowrun.yaml" >/dev/null
name="example FlowRun waits for approval with no pod running"
if wait_jsonpath fr/research-demo '{.status.waitingFor.event}' approve-research-demo 180s; then
    run_pods="cairn.dev/run=$(kget fr research-demo -o jsonpath='{.status.runId}')"
    # The suspended attempt's process exits 0 right after parking; give the kubelet a moment.
    kubectl -n "$NS" wait pods -l "$run_pods" --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null || true
    running=$(kget pods -l "$run_pods" --field-selector=status.phase!=Succeeded -o name | wc -l)
    children=$(kget fr -l cairn.dev/parent=research-demo -o name | wc -l)
    if [[ "$running" == 0 && "$children" == 3 ]]; then pass "$name"; else fail "$name" "$running pods not finished, $children child FlowRuns"; fi
else
    fail "$name" "status: $(kget fr research-demo -o jsonpath='{.status}')"
fi

name="the ResourceProfile's requests, node selector and tolerations reach the flow pod"
placed=$(kget pod research-demo-a1 -o jsonpath='{.spec.containers[0].resources.requests.cpu} {.spec.nodeSelector.kubernetes\.io/os} {.spec.tolerations[?(@.key=="cairn.dev/flows")].effect}')
if [[ "$placed" == "50m linux NoSchedule" ]]; then pass "$name"; else fail "$name" "cpu request, node selector, toleration: '$placed'"; fi

# While it waits, the tag moves to a different image: the run must stay on the digest it began with.
first_image=$(kget pod research-demo-a1 -o jsonpath='{.status.containerStatuses[0].imageID}')
moved=$("$CLUSTER_DIR/image.sh" "$IMAGE" "$REPO_ROOT/target/release/agent" --label variant=moved | sed -n 's/^manifest_digest=//p')

name="approving with a FlowEvent resumes the run to Succeeded"
kubectl apply -n "$NS" -f "$REPO_ROOT/examples/agent/k8s/approve.yaml" >/dev/null
if wait_jsonpath fr/research-demo '{.status.phase}' Succeeded 180s; then
    pass "$name"
else
    fail "$name" "status: $(kget fr research-demo -o jsonpath='{.status}')"
fi

name="the resumed pod runs the digest the run started with, not the moved tag"
last=$(kget fr research-demo -o jsonpath='{.status.pod}')
kubectl -n "$NS" wait pod "$last" --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null || true
last_spec=$(kget pod "$last" -o jsonpath='{.spec.containers[0].image}')
last_image=$(kget pod "$last" -o jsonpath='{.status.containerStatuses[0].imageID}')
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
    fail "$name" "status: $(kget fr no-such-flow -o jsonpath='{.status}')"
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
    pods=$(kget pods -o name | grep '/crashy')
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
    fail "$name" "status: $(kget fr crashy -o jsonpath='{.status}')"
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
    run_pods="cairn.dev/run=$(kget fr to-cancel -o jsonpath='{.status.runId}')"
    kubectl -n "$NS" wait pods -l "$run_pods" --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null || true
    running=$(kget pods -l "$run_pods" --field-selector=status.phase=Running -o name | wc -l)
    if [[ "$running" == 0 ]]; then pass "$name"; else fail "$name" "$running pods running"; fi
else
    fail "$name" "status: $(kget fr to-cancel -o jsonpath='{.status}')"
fi

# --- retention: tokens, events and finished runs do not pile up ---------------------------------
# until SECONDS COMMAND...: true once COMMAND prints 0 (polled every half second).
until_zero() {
    local deadline=$((SECONDS + $1)) out
    shift
    while true; do
        out=$("$@" 2>/dev/null || true)
        [[ "$out" == 0 ]] && return 0
        ((SECONDS < deadline)) || { echo "$out"; return 1; }
        sleep 0.5
    done
}
engine_count() { psql "$CAIRN_CLUSTER_PG_URL" -XtAc "$1"; }

name="an ended attempt's token Secret is deleted (its token was revoked by the engine)"
demo_id=$(kget fr research-demo -o jsonpath='{.status.runId}')
token_secrets() { kget secrets -l "cairn.dev/run=$demo_id" -o name | wc -l; }
if [[ -n "$demo_id" ]] && left=$(until_zero 30 token_secrets); then
    pass "$name"
else
    fail "$name" "run '$demo_id': $left token Secrets left: $(kget secrets -l "cairn.dev/run=$demo_id" -o name | tr '\n' ' ')"
fi

name="deleting a delivered FlowEvent deletes its event from the database"
kubectl -n "$NS" delete flowevent approve-research-demo --timeout=60s >/dev/null
if left=$(until_zero 30 engine_count "SELECT count(*) FROM cairn.events WHERE namespace = '$NS' AND name = 'approve-research-demo'"); then
    pass "$name"
else
    fail "$name" "$left event rows left"
fi

name="a finished FlowRun is deleted, with its rows, once its ttlSecondsAfterFinished has passed"
kubectl -n "$NS" patch fr to-cancel --type merge -p '{"spec":{"ttlSecondsAfterFinished":1}}' >/dev/null
if kubectl -n "$NS" wait fr/to-cancel --for=delete --timeout=60s >/dev/null 2>&1 &&
    left=$(until_zero 30 engine_count "SELECT count(*) FROM cairn.runs WHERE namespace = '$NS' AND name = 'to-cancel'"); then
    pass "$name"
else
    fail "$name" "FlowRun: $(kget fr to-cancel -o jsonpath='{.status.phase}'); rows: $left"
fi

# --- deleting a run deletes its rows -----------------------------------------------------------
name="deleting a FlowRun deletes its runs, children included, from the database"
kubectl -n "$NS" delete fr research-demo --timeout=60s >/dev/null
rows=$(psql "$CAIRN_CLUSTER_PG_URL" -tAc "SELECT count(*) FROM cairn.runs WHERE namespace = '$NS' AND name LIKE 'research-demo%'" || true)
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
    error=$(kget fr no-such-image -o jsonpath='{.status.error}')
    if [[ "$error" == *ImagePull* ]]; then pass "$name"; else fail "$name" "error '$error'"; fi
else
    fail "$name" "status: $(kget fr no-such-image -o jsonpath='{.status}')"
fi
name="input that does not match the flow's type fails the run once, naming the field"
if wait_jsonpath fr/wrong-input '{.status.phase}' Failed 120s; then
    error=$(kget fr wrong-input -o jsonpath='{.status.error}')
    attempt=$(kget fr wrong-input -o jsonpath='{.status.attempt}')
    if [[ "$error" == *topic* && "$attempt" == 1 ]]; then pass "$name"; else fail "$name" "attempt $attempt, error '$error'"; fi
else
    fail "$name" "status: $(kget fr wrong-input -o jsonpath='{.status}')"
fi

# --- a flow pod killed mid-call, a running run cancelled, a deadline, a retry -----------------
apply_slow_research_flow "$IMAGE"
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: killed }
spec: { flowRef: slow, input: { topic: pods that vanish, breadth: 1 } }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowEvent
metadata: { name: approve-killed }
spec: { event: approve-killed, payload: true }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: cancel-running }
spec: { flowRef: slow, input: { topic: second thoughts, breadth: 1 } }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: too-late }
spec: { flowRef: research, input: { topic: deadlines, breadth: 1 }, deadlineSeconds: 45 }
EOF

name="cancelling a running run stops it at the next step boundary"
# Attempt 1 is inside its first call (plan) when the cancel arrives: the call finishes and is
# kept, and nothing after it runs.
if wait_pod_log cancel-running-a1 $'calling\tcancel-running\tplan' 90 &&
    kubectl -n "$NS" patch fr cancel-running --type merge -p '{"spec":{"cancel":true}}' >/dev/null &&
    wait_jsonpath fr/cancel-running '{.status.phase}' Cancelled 60s; then
    kubectl -n "$NS" wait pod/cancel-running-a1 --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null || true
    ledger=$(ledger_of cancel-running-a1)
    children=$(kget fr -l cairn.dev/parent=cancel-running -o name | wc -l)
    pods=$(kget pods -o name | grep -c '/cancel-running-' || true)
    if grep -q $'^ledger\tpaid\tcancel-running\tplan' <<<"$ledger" && ! grep -q 'draft' <<<"$ledger" && [[ "$children" == 0 && "$pods" == 1 ]]; then
        pass "$name"
    else
        fail "$name" "$children children, $pods pods; ledger: $(tr '\n\t' '| ' <<<"$ledger")"
    fi
else
    fail "$name" "not Cancelled in 60 s"; explain cancel-running
fi

name="a flow pod deleted in the middle of a call is relaunched; completed steps do not run again"
# Attempt 1 plans and parks on its child; a later attempt replays the plan and drafts. The pod
# that is drafting is deleted mid-call (which attempt that is does not matter: a pod may also
# crash on its own under load); the next attempt replays the plan, drafts, is already approved,
# and finishes. The ledger is read from the other pods: the deleted pod's log goes with it, and
# until it does, its process may still finish the call it was in (its checkpoint is then refused).
if victim=$(wait_run_log killed $'calling\tkilled\tdraft' 240) &&
    kubectl -n "$NS" delete pod "$victim" --wait=false >/dev/null &&
    wait_jsonpath fr/killed '{.status.phase}' Succeeded 180s; then
    final=$(kget fr killed -o jsonpath='{.status.pod}')
    kubectl -n "$NS" wait "pod/$final" --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null || true
    # shellcheck disable=SC2046
    ledger=$(ledger_of $(pods_of killed | grep -vx "$victim"))
    final_ledger=$(ledger_of "$final")
    plan_paid=$(grep -c $'^ledger\tpaid\tkilled\tplan' <<<"$ledger" || true)
    draft_paid=$(grep -c $'^ledger\tpaid\tkilled\tdraft' <<<"$ledger" || true)
    attempt=$(kget fr killed -o jsonpath='{.status.attempt}')
    if [[ "$plan_paid" == 1 && "$draft_paid" == 1 && "$final" != "$victim" && "$attempt" == $((${victim##*-a} + 1)) ]] &&
        grep -q $'^ledger\treplayed\tkilled\tplan' <<<"$final_ledger" &&
        grep -q $'^ledger\tpaid\tkilled\tdraft' <<<"$final_ledger"; then
        pass "$name"
    else
        fail "$name" "deleted $victim, finished in $final (attempt $attempt); plan paid $plan_paid, draft paid $draft_paid; ledger: $(tr '\n\t' '| ' <<<"$ledger")"
    fi
else
    fail "$name" "deleted '${victim:-nothing}'"; explain killed
fi

name="a run past spec.deadlineSeconds fails saying so, and its pods carry the deadline"
if wait_jsonpath fr/too-late '{.status.phase}' Failed 150s; then
    error=$(kget fr too-late -o jsonpath='{.status.error}')
    run_id=$(kget fr too-late -o jsonpath='{.status.runId}')
    active=$(kget pods -l "cairn.dev/run=$run_id" -o jsonpath='{.items[0].spec.activeDeadlineSeconds}')
    children=$(kget fr -l cairn.dev/parent=too-late -o jsonpath='{.items[*].status.phase}')
    if [[ "$error" == *"deadline exceeded"* && "${active:-0}" -ge 1 && "${active:-0}" -le 45 && "$children" != *Running* ]]; then
        pass "$name"
    else
        fail "$name" "error '$error', activeDeadlineSeconds '$active', children '$children'"
    fi
else
    fail "$name" "status: $(kget fr too-late -o jsonpath='{.status}')"
fi

name="the cairn.dev/retry annotation retries a failed run once per value"
kubectl -n "$NS" annotate fr wrong-input cairn.dev/retry=first >/dev/null
if wait_jsonpath fr/wrong-input '{.status.retried}' first 60s &&
    wait_jsonpath fr/wrong-input '{.status.attempt}' 2 60s &&
    wait_jsonpath fr/wrong-input '{.status.phase}' Failed 60s; then
    pass "$name"
else
    fail "$name" "status: $(kget fr wrong-input -o jsonpath='{.status}')"
fi

# --- two operators: one acts, the other stands by and takes over; nothing lost or doubled ---------
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: restarted }
spec: { flowRef: research, input: { topic: operator restarts, breadth: 2 } }
EOF
kubectl -n "$NS" wait pod/restarted-a1 --for=create --timeout=60s >/dev/null 2>&1 || true
STANDBY=127.0.0.1:18081
: >"$LOG_DIR/operator-standby.log"
# The standby runs with a small running budget, tried once it leads.
start_operator "$STANDBY" "$LOG_DIR/operator-standby.log" --max-running-per-namespace 2
standby_pid=$!
name="a second operator stands by while the Lease is held"
if wait_log "$LOG_DIR/operator-standby.log" "waiting to hold the Lease" 30 && sleep 3 &&
    ! grep -q "holding the Lease" "$LOG_DIR/operator-standby.log" &&
    [[ "$(curl -fsS "http://$STANDBY/readyz" || true)" == ok ]]; then
    pass "$name"
else
    fail "$name" "standby log: $(tail -n 5 "$LOG_DIR/operator-standby.log")"
fi
kill "$operator_pid"
wait "$operator_pid" 2>/dev/null || true
operator_pid=$standby_pid standby_pid="" ENDPOINTS=$STANDBY
name="when the leader stops, the standby takes over and the run carries on with one pod per attempt"
# A run created after the handover is the new leader's from the start.
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: after-handover }
spec: { flowRef: research, input: { topic: new leaders, breadth: 1 } }
EOF
if wait_log "$LOG_DIR/operator-standby.log" "holding the Lease" 60 &&
    wait_jsonpath fr/restarted '{.status.waitingFor.event}' approve-restarted 180s &&
    wait_jsonpath fr/after-handover '{.status.waitingFor.event}' approve-after-handover 180s; then
    attempt=$(kget fr restarted -o jsonpath='{.status.attempt}')
    run_id=$(kget fr restarted -o jsonpath='{.status.runId}')
    pods=$(kget pods -l "cairn.dev/run=$run_id" -o name | wc -l)
    if [[ "$pods" == "$attempt" ]]; then pass "$name"; else fail "$name" "$pods pods for $attempt attempts"; fi
else
    fail "$name" "status: $(kget fr restarted -o jsonpath='{.status}'); standby log: $(tail -n 5 "$LOG_DIR/operator-standby.log")"
fi

# --- the running budget: at most 2 flow pods of this namespace at once (the standby's flag) -------
for i in 1 2 3 4 5; do
    cat <<EOF
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: budget-$i }
spec:
  image: $IMAGE
  flow: research
  input: { topic: budgets, breadth: 1 }
  env: [ { name: CAIRN_EXAMPLE_LLM_MS, value: "1500" } ]
EOF
done | kubectl apply -n "$NS" -f - >/dev/null
name="over the running budget, runs wait Pending with the reason, and all get their turn"
most=0 held=""
deadline=$((SECONDS + 240))
while (( SECONDS < deadline )); do
    running=$(psql "$CAIRN_CLUSTER_PG_URL" -tAc "SELECT count(*) FROM cairn.runs WHERE namespace = '$NS' AND state = 'running'" || echo 0)
    (( running > most )) && most=$running
    reasons=$(kget fr -o jsonpath='{range .items[*]}{.status.conditions[0].reason}{"\n"}{end}')
    grep -q WaitingForSlot <<<"$reasons" && held=yes
    waiting=$(kget fr -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}' | grep -c '^budget-[0-9] Waiting' || true)
    (( waiting == 5 )) && break
    sleep 1
done
if [[ "$waiting" == 5 && "$most" -le 2 && "$held" == yes ]]; then
    pass "$name (at most $most running; all 5 reached Waiting)"
else
    fail "$name" "$waiting of 5 waiting, at most $most running at once, held back: ${held:-never seen}"
fi
# "Waiting" includes waiting for their children: the budget runs are deleted (their runs
# cancelled) so that the checks below do not queue behind them for the budget's two slots.
kubectl -n "$NS" delete fr budget-1 budget-2 budget-3 budget-4 budget-5 --wait=false >/dev/null 2>&1 || true

# --- a corpus of malformed objects: each refused with a message that says what to fix ----------
name="every manifest of the malformed corpus is refused by the API server, saying what is wrong"
refused=0 total=0 wrong=""
for manifest in "$CLUSTER_DIR"/corpus/*.yaml; do
    total=$((total + 1))
    expect=$(sed -n 's/^# expect: //p' "$manifest")
    if out=$(kubectl apply --dry-run=server -n "$NS" -f "$manifest" 2>&1); then
        wrong+=" $(basename "$manifest"): accepted;"
    elif grep -qF -- "$expect" <<<"$out"; then
        refused=$((refused + 1))
    else
        wrong+=" $(basename "$manifest"): $out;"
    fi
done
# An input far over the API server's request limit.
total=$((total + 1))
big=$(head -c 4000000 /dev/zero | tr '\0' 'x')
if out=$(printf 'apiVersion: cairn.dev/v1alpha1\nkind: FlowRun\nmetadata: { name: corpus-huge }\nspec: { flowRef: research, input: { topic: "%s" } }\n' "$big" |
    kubectl apply --dry-run=server -n "$NS" -f - 2>&1); then
    wrong+=" a 4 MB input: accepted;"
elif grep -qiE "too large|exceeds" <<<"$out"; then
    refused=$((refused + 1))
else
    wrong+=" a 4 MB input: $(head -c 200 <<<"$out");"
fi
if [[ "$refused" == "$total" ]]; then pass "$name ($refused manifests)"; else fail "$name" "$refused of $total;$wrong"; fi

# A profile a pod would refuse (`cpu: lots`, a misspelt toleration effect) is refused by the
# API server's CEL rules (the corpus above); the operator's own check of it stays for profiles
# stored before those rules, and is unit-tested. A profile that is missing is the operator's:
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: bad-profile }
spec: { flowRef: research, profile: missing-$NS, input: { topic: x } }
EOF
name="a FlowRun naming a missing profile gets a condition naming it, and no pod"
if wait_jsonpath fr/bad-profile '{.status.conditions[0].reason}' ProfileNotFound 60s; then
    message=$(kget fr bad-profile -o jsonpath='{.status.conditions[0].message}')
    pods=$(kget pods -o name | grep -c '/bad-profile-' || true)
    if [[ "$message" == *"ResourceProfile \"missing-$NS\" not found"* && "$pods" == 0 ]]; then pass "$name"; else fail "$name" "$pods pods; '$message'"; fi
else
    fail "$name" "status: $(kget fr bad-profile -o jsonpath='{.status}')"
fi

name="an approval failing the wait's schema is refused, the run keeps waiting, and a valid one completes it"
# Only a wait that exists can check a payload: emitted earlier, the run would fail on it instead.
wait_jsonpath fr/after-handover '{.status.waitingFor.event}' approve-after-handover 180s || true
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowEvent
metadata: { name: approve-after-handover-wrong }
spec: { event: approve-after-handover, payload: "yes please" }
EOF
if wait_jsonpath fe/approve-after-handover-wrong '{.status.delivered}' false 60s; then
    message=$(kget fe approve-after-handover-wrong -o jsonpath='{.status.message}')
    phase=$(kget fr after-handover -o jsonpath='{.status.phase}')
    kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowEvent
metadata: { name: approve-after-handover }
spec: { event: approve-after-handover, payload: true }
EOF
    if [[ "$message" == *schema* && "$phase" == Waiting ]] && wait_jsonpath fr/after-handover '{.status.phase}' Succeeded 120s; then
        pass "$name"
    else
        fail "$name" "refusal '$message', phase then '$phase', now $(kget fr after-handover -o jsonpath='{.status.phase}')"
        explain after-handover
    fi
else
    fail "$name" "status: $(kget fe approve-after-handover-wrong -o jsonpath='{.status}')"
fi

# --- least privilege: flow pods' credentials reach no table, only their own run ----------------
name="flow pods log in as the runner role, which can touch no table, and carry their attempt's token"
runner_url=$(kget secret cairn-runner-db -o jsonpath='{.data.database-url}' | base64 -d)
login=$(psql "$runner_url" -tAc "SELECT current_user" 2>&1 || true)
tables=$(psql "$runner_url" -tAc "SELECT count(*) FROM cairn.steps" 2>&1 || true)
# Any flow pod of the run (which attempts had pods depends on how the handover went).
token_ref=$(kget pods -l "cairn.dev/run=$(kget fr after-handover -o jsonpath='{.status.runId}')" \
    -o jsonpath='{.items[0].spec.containers[0].env[?(@.name=="CAIRN_TOKEN")].valueFrom.secretKeyRef.name}')
if [[ "$login" == *runner_login && "$tables" == *"permission denied"* && "$token_ref" == cairn-token-* ]]; then
    pass "$name"
else
    fail "$name" "login '$login'; reading cairn.steps: '$tables'; token from '$token_ref'"; explain after-handover
fi

# --- health and metrics ---------------------------------------------------------------------
name="the operator serves /livez, /readyz and /metrics with run counts and launches"
livez=$(curl -fsS "http://$ENDPOINTS/livez" || true)
readyz=$(curl -fsS "http://$ENDPOINTS/readyz" || true)
metrics=$(curl -fsS "http://$ENDPOINTS/metrics" || true)
launches=$(sed -n 's/^cairn_pod_launches_total \([0-9]*\).*/\1/p' <<<"$metrics")
resumes=$(awk '/^cairn_resume_latency_seconds_sum/ { s = $2 } /^cairn_resume_latency_seconds_count/ { n = $2 }
    END { if (n > 0) printf "resume latency (runnable -> pod created) mean %.0f ms over %d resumes", 1000 * s / n, n }' <<<"$metrics")
if [[ "$livez" == ok && "$readyz" == ok && "$metrics" == *'cairn_runs{phase="succeeded"}'* && "${launches:-0}" -gt 0 ]]; then
    pass "$name (${resumes:-no resumes since the handover})"
else
    fail "$name" "livez '$livez', readyz '$readyz', launches '$launches' since the restart"
fi

# --- an image whose SDK the engine no longer serves -----------------------------------------------
# What a release that drops runner protocol 1 does to a run of an image built before it: the
# schema's engine_info is set as that release's migration would set it.
name="a flow image whose SDK speaks a protocol the engine no longer serves fails its run, saying so, once"
engine_info() {
    psql "$CAIRN_CLUSTER_PG_URL" -XqAt -v ON_ERROR_STOP=1 -c "CREATE OR REPLACE FUNCTION cairn.engine_info()
        RETURNS TABLE (launcher_contract integer, runner_oldest integer, runner_newest integer)
        LANGUAGE sql STABLE AS \$\$ SELECT 1, $1, $1 \$\$" >/dev/null
}
engine_info 2
kubectl apply -n "$NS" -f - >/dev/null <<EOF2
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: old-sdk }
spec: { flowRef: research, input: { topic: protocols, breadth: 1 } }
EOF2
if wait_jsonpath fr/old-sdk '{.status.phase}' Failed 120s; then
    message=$(kget fr old-sdk -o jsonpath='{.status.error}')
    pods=$(kget pods -l "cairn.dev/run=$(kget fr old-sdk -o jsonpath='{.status.runId}')" -o name | wc -l)
    if [[ "$message" == *"speaks runner protocol 1"*"serves runner protocols 2 to 2"*"rebuild the image"* && "$pods" == 1 ]]; then
        pass "$name"
    else
        fail "$name" "error '$message'; $pods pods"
    fi
else
    fail "$name" "status: $(kget fr old-sdk -o jsonpath='{.status}')"; explain old-sdk
fi
engine_info 1
