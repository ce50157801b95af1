#!/usr/bin/env bash
# Failure tests on the real cluster (`make test-chaos`): what Cairn promises (nothing paid for
# twice, nothing lost, a superseded attempt writes nothing) under a frozen flow process on a
# silent node, an operator killed over and over while it launches, and one event waking
# hundreds of runs under the running budget.
#
# Each scenario prints PASS/FAIL with what it measured; the last line is "N passed, M failed".
# Flags: RUNS (default 200) runs wait on the shared event; KILLS (default 8) operator kills.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"

AGENT_IMAGE=localhost/cairn-agent:dev
FLOWS_IMAGE=localhost/cairn-test-flows:dev
NS="chaos-$(date +%s)"
RUNS=${RUNS:-200}
KILLS=${KILLS:-8}
# The kill moments are random; CHAOS_SEED=N replays a run's (it is printed).
CHAOS_SEED=${CHAOS_SEED:-$(date +%s)}
RANDOM=$CHAOS_SEED
BUDGET=20
OPERATOR_LOG="$LOG_DIR/chaos-operator.log"
operator_pid="" sampler_pid="" frozen_pids=()

finish() {
    local rc=$?
    # Never leave the node or a flow process frozen.
    for pid in "${frozen_pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
    kubectl -n "$NS" delete flowruns --all --timeout=120s >/dev/null 2>&1 || true
    [[ -n "$operator_pid" ]] && { kill "$operator_pid" 2>/dev/null || true; }
    [[ -n "$sampler_pid" ]] && { kill "$sampler_pid" 2>/dev/null || true; }
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    drop_own_database
    e2e_summary "$rc" "$OPERATOR_LOG"
}
trap finish EXIT

e2e_setup

log "random seed: CHAOS_SEED=$CHAOS_SEED"
log "building the operator, the example agent and the test flows"
build_static_bins
"$CLUSTER_DIR/image.sh" "$AGENT_IMAGE" "$(static_bin_dir)/agent" >/dev/null
"$CLUSTER_DIR/image.sh" "$FLOWS_IMAGE" "$(static_bin_dir)/test-flows" >/dev/null

# The operator: a host process with the admin kubeconfig, restarted by the kill storm.
operator() {
    start_operator 127.0.0.1:18090 "$OPERATOR_LOG" --max-running "$BUDGET"
    operator_pid=$!
}
: >"$OPERATOR_LOG"
log "starting the operator (log: $OPERATOR_LOG)"
operator

# psql QUERY: one value from the cluster's Postgres.
psql_value() { psql "$CAIRN_CLUSTER_PG_URL" -XAtc "$1"; }
# host_pid POD: the flow process of a pod, as the node sees it.
host_pid() {
    local id
    id=$(kget pod "$1" -o jsonpath='{.status.containerStatuses[0].containerID}')
    /usr/bin/ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls | awk -v id="${id#containerd://}" '$1 == id { print $2 }'
}
# ms_since START_NS: milliseconds since a `date +%s%N` reading.
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# --- zombie: a frozen flow process on a node gone silent -----------------------------------------
# The node's kubelet is frozen too (a network partition, as the control plane sees it), so the
# pod can be force-deleted while its process lives on. The operator relaunches the run; the
# frozen process then wakes, finishes its LLM call, and its checkpoint must be refused.
apply_slow_research_flow "$AGENT_IMAGE"
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: zombie }
spec: { flowRef: slow, input: { topic: frozen clocks, breadth: 1 } }
---
apiVersion: cairn.dev/v1alpha1
kind: FlowEvent
metadata: { name: approve-zombie }
spec: { event: approve-zombie, payload: true }
EOF
name="a frozen flow process, relaunched past, wakes up and none of its writes lands"
if pod=$(wait_run_log zombie $'calling\tzombie\tplan' 120) && pid=$(host_pid "$pod") && [[ -n "$pid" ]]; then
    uid=$(kget pod "$pod" -o jsonpath='{.metadata.uid}')
    kubelet_pid=$(cat "$RUN_DIR/kubelet.pid")
    kill -STOP "$pid"; frozen_pids+=("$pid")
    kill -STOP "$kubelet_pid"; frozen_pids+=("$kubelet_pid")
    kubectl -n "$NS" delete pod "$pod" --force --grace-period=0 >/dev/null 2>&1
    # The operator sees the pod gone and claims the next attempt (its pod cannot start yet).
    relaunched=false
    wait_jsonpath fr/zombie '{.status.attempt}' 2 60s && relaunched=true
    kill -CONT "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    # What the zombie said as it exited (the kubelet, frozen, has not cleaned up yet).
    outcome=$(cat "$STATE_DIR"/kubelet/pods/"$uid"/containers/*/* 2>/dev/null || true)
    kill -CONT "$kubelet_pid"
    frozen_pids=()
    if $relaunched && wait_jsonpath fr/zombie '{.status.phase}' Succeeded 180s; then
        run_id=$(kget fr zombie -o jsonpath='{.status.runId}')
        plan_by=$(psql_value "SELECT attempt FROM cairn.steps WHERE run_id = '$run_id' AND key = 'plan'")
        if [[ "$outcome" == *superseded* && "$plan_by" == 2 ]]; then
            pass "$name (the zombie exited '$outcome'; attempt 2 checkpointed the plan)"
        else
            fail "$name" "the zombie's outcome '$outcome', plan checkpointed by attempt '$plan_by'"
        fi
    else
        fail "$name" "relaunched: $relaunched"; explain zombie
    fi
else
    fail "$name" "no pod calling the plan"; explain zombie
fi

# --- the operator killed over and over while it launches; then one event wakes every run ------
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: Flow
metadata: { name: approval }
spec:
  image: $FLOWS_IMAGE
  flow: approval
  retry: { maxAttempts: 5, backoffSeconds: 1 }
  env:
    - { name: CAIRN_TEST_LOG, value: "-" }
EOF
# What the budget caps (each running attempt holds a flow process and a database connection),
# sampled in the background every half second; max_running_since_reset reads the highest.
samples="$LOG_DIR/chaos-running.samples"
: >"$samples"
(while sleep 0.5; do
    psql_value "SELECT count(*) FROM cairn.runs WHERE namespace = '$NS' AND state = 'running'" >>"$samples" 2>/dev/null || true
done) &
sampler_pid=$!
max_running_since_reset() { { echo 0; cat "$samples"; } | sort -n | tail -n 1; : >"$samples"; }

for i in $(seq "$RUNS"); do
    printf -- '---\napiVersion: cairn.dev/v1alpha1\nkind: FlowRun\nmetadata: { name: wait-%03d, labels: { chaos: wait } }\nspec: { flowRef: approval, input: { event: go } }\n' "$i"
done | kubectl apply -n "$NS" -f - >/dev/null
created=$(date +%s%N)

# SIGKILL the operator at random moments while it launches, and start it again at once. A
# restarted operator first waits out the dead one's Lease (up to 20 s), so each kill waits
# until the new one acts.
acting() { grep -c "holding the Lease: acting" "$OPERATOR_LOG" || true; }
for k in $(seq "$KILLS"); do
    for _ in $(seq 120); do (( $(acting) >= k )) && break; sleep 0.5; done
    sleep "$((RANDOM % 2)).$((RANDOM % 10))"
    kill -KILL "$operator_pid"; wait "$operator_pid" 2>/dev/null || true
    operator
done
log "killed the operator $KILLS times; waiting for $RUNS runs to reach their wait"

waiting_count() { kget fr -l chaos=wait -o jsonpath='{range .items[*]}{.status.waitingFor.event}{"\n"}{end}' | grep -c '^go$' || true; }
# until_all COUNT_FUNCTION: until it says $RUNS (15 minutes at most).
until_all() {
    local deadline=$((SECONDS + 900))
    until [[ "$($1)" == "$RUNS" ]] || (( SECONDS >= deadline )); do sleep 1; done
}
until_all waiting_count
max_running=$(max_running_since_reset)
all_waiting_ms=$(ms_since "$created")
# pod_logs: every flow pod's log, read once all the pods have ended (a pod still running may
# have printed lines not yet in its log file). --ignore-errors: one log that cannot be read
# must not end the read of the other hundreds; it shows as a line "error: ...", and the read
# is done again (a kubelet busy under hundreds of reads fails a few) up to five times.
pod_logs() {
    local out
    for _ in $(seq 120); do
        [[ -z "$(kget pods -l cairn.dev/run --field-selector=status.phase!=Succeeded,status.phase!=Failed -o name)" ]] && break
        sleep 0.5
    done
    for _ in 1 2 3 4 5; do
        out=$(kubectl -n "$NS" logs -l cairn.dev/run --tail=-1 --max-log-requests=20 --ignore-errors --prefix 2>&1)
        grep -q '^error: ' <<<"$out" || break
    done
    printf '%s\n' "$out"
}
# effects LOGS: the side effects the flows printed (run, what, attempt, pid), without prefixes.
effects() { sed -n $'s/^\\[[^]]*\\] effect\t//p' <<<"$1"; }
unreadable() { grep -c '^error: ' <<<"$1" || true; }
name="$RUNS runs launched while the operator is SIGKILLed $KILLS times all reach their wait, each step run once"
waiting=$(waiting_count)
attempts=$(kget fr -l chaos=wait -o jsonpath='{range .items[*]}{.status.attempt}{"\n"}{end}' | sort | uniq -c | tr -s ' \n' ' ')
logs=$(pod_logs)
before=$(effects "$logs" | awk -F'\t' '$2 == "step:before"' | cut -f1 | sort | uniq -c | awk '{ print $1 }' | sort | uniq -c | tr -s ' \n' ' ')
if [[ "$waiting" == "$RUNS" && "$before" == " $RUNS 1 " && "$max_running" -le "$BUDGET" ]]; then
    pass "$name (all waiting after $((all_waiting_ms / 1000)) s; runs by attempt: $attempts; at most $max_running running at once)"
else
    fail "$name" "$waiting waiting; runs by attempt:$attempts; at most $max_running running at once; 'before' steps per run (count runs):$before"
fi

name="one FlowEvent wakes $RUNS waiting runs under a budget of $BUDGET: every one resumes once"
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowEvent
metadata: { name: go }
spec: { event: go, payload: { approved: true, by: chaos } }
EOF
emitted=$(date +%s%N)
succeeded_count() { kget fr -l chaos=wait -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Succeeded$' || true; }
until_all succeeded_count
max_running=$(max_running_since_reset)
all_done_ms=$(ms_since "$emitted")
done_count=$(succeeded_count)
logs=$(pod_logs)
all_effects=$(effects "$logs")
after=$(awk -F'\t' '$2 == "step:after"' <<<"$all_effects" | cut -f1 | sort | uniq -c | awk '{ print $1 }' | sort | uniq -c | tr -s ' \n' ' ')
saw=$(awk -F'\t' '$2 ~ /^saw:/ && $2 ~ /"approved":true/' <<<"$all_effects" | cut -f1 | sort -u | wc -l)
if [[ "$done_count" == "$RUNS" && "$after" == " $RUNS 1 " && "$saw" == "$RUNS" && "$max_running" -le "$BUDGET" ]]; then
    pass "$name ($RUNS succeeded $((all_done_ms / 1000)) s after the event; at most $max_running running at once)"
else
    fail "$name" "$done_count succeeded; 'after' steps per run (count runs):$after; $saw saw the approval; at most $max_running running at once; $(unreadable "$logs") pod logs unreadable"
    # Which runs, and what their pods were, for the next look.
    for run in $(comm -23 <(kget fr -l chaos=wait -o name | sed 's|.*/||' | sort) \
        <(awk -F'\t' '$2 ~ /^saw:/' <<<"$all_effects" | cut -f1 | sort -u)); do
        echo "--- $run: no 'saw' in any pod log; its pods:"
        kget pods -o wide | grep -E "^(NAME|$run-)" || true
        grep -F "$run" <<<"$logs" | head -n 20 || true
    done
fi
