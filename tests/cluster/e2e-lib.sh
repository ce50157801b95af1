# shellcheck shell=bash
# Helpers of the end-to-end scripts still in bash (chaos-e2e.sh) that run an operator against one
# test namespace ($NS): checks that report PASS/FAIL and count them, waits, and reading flow pods'
# logs. The other end-to-end tests are Rust (tests/e2e), with helpers of their own. Sourced after
# lib.sh; the script sets NS and the counters `passed` and `failed`.

passed=0 failed=0

# apply_slow_research_flow IMAGE: Flow `slow`, the example agent with every LLM call taking 4 s
# (so a test can act while a call is in flight) and its ledger in the pod's log.
apply_slow_research_flow() {
    kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: Flow
metadata: { name: slow }
spec:
  image: $1
  flow: research
  retry: { maxAttempts: 3, backoffSeconds: 1 }
  env:
    - { name: CAIRN_EXAMPLE_LLM_MS, value: "4000" }
    - { name: CAIRN_EXAMPLE_LEDGER, value: "-" }
EOF
}

# e2e_setup: the cluster up (built on first use) with its environment loaded, a database of
# the test's own (drop_own_database removes it), the CRDs applied, and the test namespace.
e2e_setup() {
    local kubeconfig
    kubeconfig="$("$CLUSTER_DIR/up.sh" | tail -n 1)"
    # shellcheck disable=SC1091
    source "$STATE_DIR/env"
    # shellcheck disable=SC2153  # KUBECONFIG is set by the env file sourced above
    [[ "$KUBECONFIG" == "$kubeconfig" ]] || die "up.sh printed $kubeconfig, env file says $KUBECONFIG"
    own_database "${NS//-/_}"
    kubectl apply -f "$REPO_ROOT/crds/generated/crds.yaml" >/dev/null
    kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
    kubectl create namespace "$NS" >/dev/null
}

# e2e_summary RC OPERATOR_LOG: the last line ("N passed, M failed"), after the operator's log
# when anything failed; exits 1 then.
e2e_summary() {
    (( $1 == 0 && failed == 0 )) || { echo "--- operator log (last 40 lines) ---" >&2; tail -n 40 "$2" >&2 || true; }
    echo "$passed passed, $failed failed"
    (( failed == 0 && $1 == 0 )) || exit 1
}

pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1: $2"; failed=$((failed + 1)); }

# wait_jsonpath KIND/NAME JSONPATH VALUE TIMEOUT: kubectl's own wait (a watch, not a poll loop).
wait_jsonpath() {
    kubectl -n "$NS" wait "$1" --for=jsonpath="$2"="$3" --timeout="$4" >/dev/null 2>&1
}

# start_operator LISTEN LOG [FLAGS...]: an operator for this test's namespace only (other tests
# may run operators of their own), electing its leader through this test's own Lease.
start_operator() {
    local listen=$1 log=$2; shift 2
    CAIRN_DATABASE_URL="$CAIRN_CLUSTER_PG_URL" "$(static_bin_dir)/cairn" operator --listen "$listen" \
        --watch-namespaces "$NS" --lease-namespace "$NS" --lease-name cairn-e2e "$@" >>"$log" 2>&1 &
}
# kget ARGS...: `kubectl get` in the test namespace for a check; a missing object reads as empty
# (the check then fails with a message) instead of ending the script under `set -e`.
kget() { kubectl -n "$NS" get "$@" 2>/dev/null || true; }
# pods_of FLOWRUN: the names of its flow pods, oldest attempt first.
pods_of() {
    local run_id
    run_id=$(kget fr "$1" -o jsonpath='{.status.runId}')
    [[ -n "$run_id" ]] || return 0
    kget pods -l "cairn.dev/run=$run_id" --sort-by='{.metadata.labels.cairn\.dev/attempt}' -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}
# wait_run_log FLOWRUN TEXT SECONDS: prints the first of the run's pods whose log says TEXT.
wait_run_log() {
    local deadline=$((SECONDS + $3)) pod
    while (( SECONDS < deadline )); do
        for pod in $(pods_of "$1"); do
            if kubectl -n "$NS" logs "$pod" 2>/dev/null | grep -qF "$2"; then echo "$pod"; return 0; fi
        done
        sleep 0.5
    done
    return 1
}
# explain FLOWRUN: what a failed check saw, for the CI log (pods, their exits, the operator's lines).
explain() {
    echo "    status: $(kget fr "$1" -o jsonpath='{.status}')"
    kget pods -l "cairn.dev/run=$(kget fr "$1" -o jsonpath='{.status.runId}')" \
        -o jsonpath='{range .items[*]}    pod {.metadata.name}: {.status.phase} {.status.containerStatuses[0].state}{"\n"}{end}'
    psql "$CAIRN_CLUSTER_PG_URL" -XqAt -F ' ' -c "SELECT 'engine: state', state, 'attempt', attempt, 'cancel_requested', cancel_requested,
        'steps', (SELECT count(*) FROM cairn.steps s WHERE s.run_id = r.id), 'updated', updated_at
        FROM cairn.runs r WHERE namespace = '$NS' AND name = '$1'" 2>&1 | sed 's/^/    /' || true
    echo "    running in $NS: $(psql "$CAIRN_CLUSTER_PG_URL" -XqAt -c "SELECT string_agg(name || ' (attempt ' || attempt || ')', ', ')
        FROM cairn.runs WHERE namespace = '$NS' AND state = 'running'" 2>&1)"
    psql "$CAIRN_CLUSTER_PG_URL" -XqAt -F ' ' -c "SELECT 'busy backend', pid, usename, state, wait_event_type, wait_event,
        'blocked by', pg_blocking_pids(pid), 'for', now() - query_start, left(query, 70)
        FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()" 2>&1 | sed 's/^/    /' || true
    local pod
    for pod in $(pods_of "$1"); do
        kubectl -n "$NS" logs "$pod" --tail=6 2>&1 | sed "s/^/    $pod: /" || true
    done
    kubectl -n "$NS" get events --field-selector "involvedObject.name=$1" --no-headers 2>/dev/null | tail -n 8 | sed 's/^/    event: /' || true
    grep -F "\"$1\"" "${OPERATOR_LOG:-$LOG_DIR/operator.log}" | tail -n 15 | sed 's/^/    operator: /' || true
}
