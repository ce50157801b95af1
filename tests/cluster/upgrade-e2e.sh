#!/usr/bin/env bash
# Upgrade and rollback on the real cluster (`make test-upgrade`): the operator, chart and flow
# images of an earlier commit (BASE below) park 20 runs (6 waiting for an event, 6 on a durable
# timer, 8 agents at least 4 of which join child runs still at work); `helm upgrade` to this
# tree's chart and operator applies at least one new migration;
# the runs resume under the new operator in pods of the image digest they started with (the
# old SDK, speaking to the new engine) and all finish, with no step paid twice. Then `helm
# rollback`: the old operator starts on the newer schema and runs new FlowRuns.
#
# BASE is a fixed commit whose baseline migration is this tree's; its binaries are built once
# per machine into $CAIRN_CACHE_DIR/upgrade/<commit> (a cold build takes minutes; later runs
# reuse them). Each check prints PASS/FAIL; the last line is "N passed, M failed".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE=c8afc5729a939a8bf8c9adbc7218bfba731d9a25   # "Engine as a versioned contract" (schema 1)
TS="$(date +%s)"
REL="cairn-up-$TS"
SYS_NS="cairn-up-system-$TS"
NS="upgrade-e2e-$TS"
LEASE="cairn-up-$TS"
PREFIX="up-$TS-"
DEPLOY="$REL-operator"
OLD_OPERATOR=localhost/cairn-operator:upgrade-base
NEW_OPERATOR=localhost/cairn-operator:upgrade-new
OLD_AGENT=localhost/cairn-agent:upgrade-base
OLD_FLOWS=localhost/cairn-test-flows:upgrade-base
passed=0 failed=0 installed="" workdir=""

pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() {
    echo "FAIL: $1: $2"
    failed=$((failed + 1))
    {
        echo "--- operator log (last 30 lines) ---"
        kubectl -n "$SYS_NS" logs "deploy/$DEPLOY" --tail=30 2>&1 || true
        kubectl -n "$NS" get fr,fe -o wide 2>&1 || true
    } >&2
}
kget() { kubectl -n "$NS" get "$@" 2>/dev/null || true; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }'; }
schema_version() { psql "$CAIRN_CLUSTER_PG_URL" -XtAc "SELECT max(version) FROM cairn._sqlx_migrations" 2>&1; }
lease_holder() {
    kubectl -n "$SYS_NS" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null | sed 's/-[0-9a-f]*$//'
}
holder_is() { [[ "$(lease_holder)" == "$1" ]]; }
# until_true SECONDS COMMAND...: polls COMMAND every second until it succeeds.
until_true() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do ((SECONDS < deadline)) || return 1; sleep 1; done
}
# The runs' phases, one word each, sorted.
phases() { kget fr -l upgrade-e2e=parked -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | sort | uniq -c | tr -s ' \n' ' '; }
all_in() { [[ "$(kget fr -l upgrade-e2e=parked -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -cvx "$1")" == 0 ]]; }

finish() {
    local rc=$?
    set +e
    if [[ -n "$installed" ]]; then
        kubectl -n "$NS" delete fr --all --timeout=60s >/dev/null 2>&1
        helm uninstall "$REL" -n "$SYS_NS" --wait --timeout 60s >/dev/null 2>&1
    fi
    kubectl delete namespace "$NS" "$SYS_NS" --wait=false >/dev/null 2>&1
    kubectl delete resourceprofiles -l "app.kubernetes.io/instance=$REL" --wait=false >/dev/null 2>&1
    # The rollback left the old CRDs in place: the other tests expect this tree's.
    kubectl apply -f "$REPO_ROOT/crds/generated/crds.yaml" >/dev/null 2>&1
    drop_own_database
    [[ -n "$workdir" ]] && rm -rf "$workdir"
    echo "$passed passed, $failed failed"
    (( failed == 0 && rc == 0 )) || exit 1
}
trap finish EXIT

kubeconfig="$("$CLUSTER_DIR/up.sh" | tail -n 1)"
# shellcheck disable=SC1091
source "$STATE_DIR/env"
# shellcheck disable=SC2153  # KUBECONFIG comes from the env file
[[ "$KUBECONFIG" == "$kubeconfig" ]] || die "up.sh printed $kubeconfig, env file says $KUBECONFIG"
own_database "${NS//-/_}"
workdir="$(mktemp -d)"

# --- the two releases' binaries and images ------------------------------------------------------
log "building this tree's operator"
build_static_bins
cp "$(static_bin_dir)/cairn" "$workdir/cairn-new"
# Static (musl) binaries, as image.sh's Dockerfiles take them.
base_bin="$CAIRN_CACHE_DIR/upgrade/$BASE/$STATIC_TARGET"
base_target="$CAIRN_CACHE_DIR/upgrade/target"
if [[ ! -x "$base_bin/cairn" || ! -x "$base_bin/agent" || ! -x "$base_bin/test-flows" ]]; then
    log "building cairn, the example agent and test-flows of $BASE (once per machine)"
    git -C "$REPO_ROOT" cat-file -e "$BASE^{commit}" 2>/dev/null ||
        die "commit $BASE is not in this clone: fetch the full history"
    mkdir -p "$workdir/base-src" "$base_bin"
    git -C "$REPO_ROOT" archive "$BASE" | tar -x -C "$workdir/base-src"
    # The dependencies' artifacts do not depend on where the workspace is: start from this
    # tree's (hard links; build scripts and proc macros are in the host's release/), so that
    # mostly the earlier commit's own crates are compiled.
    for dir in release "$STATIC_TARGET/release"; do
        mkdir -p "$base_target/$dir"
        for part in deps build .fingerprint; do
            if [[ -d "$REPO_ROOT/target/$dir/$part" ]]; then
                cp -al -n "$REPO_ROOT/target/$dir/$part" "$base_target/$dir/" 2>/dev/null || true
            fi
        done
    done
    (cd "$workdir/base-src" && SQLX_OFFLINE=true CARGO_TARGET_DIR="$base_target" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
        cargo build --release --locked --target "$STATIC_TARGET" -p cairn-operator -p cairn-example-agent \
        -p cairn-tests --bin cairn --bin agent --bin test-flows >&2)
    for bin in cairn agent test-flows; do
        cp "$base_target/$STATIC_TARGET/release/$bin" "$base_bin/$bin.new" && mv "$base_bin/$bin.new" "$base_bin/$bin"
    done
fi
[[ -d "$base_bin/charts/cairn" ]] || git -C "$REPO_ROOT" archive "$BASE" charts/cairn | tar -x -C "$base_bin"
"$CLUSTER_DIR/image.sh" "$OLD_OPERATOR" "$base_bin/cairn" >/dev/null
"$CLUSTER_DIR/image.sh" "$NEW_OPERATOR" "$workdir/cairn-new" >/dev/null
old_agent=$("$CLUSTER_DIR/image.sh" "$OLD_AGENT" "$base_bin/agent" | sed -n 's/^manifest_digest=//p')
old_flows=$("$CLUSTER_DIR/image.sh" "$OLD_FLOWS" "$base_bin/test-flows" | sed -n 's/^manifest_digest=//p')

for ns in "$SYS_NS" "$NS"; do
    kubectl create namespace "$ns" >/dev/null
    kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
done
# Plaintext: BASE predates TLS support, and the runs it parks keep its SDK after the upgrade.
release=(--set database.url="$CAIRN_CLUSTER_PG_URL_PLAIN" --set "watchNamespaces={$NS}"
    --set leaderElection.leaseName="$LEASE" --set resourceProfiles.namePrefix="$PREFIX"
    --set image.pullPolicy=Never --wait --timeout 180s)

# --- the old release parks 20 runs ---------------------------------------------------------------
name="the old release ($BASE) installs and migrates the database to schema 1"
if out=$(helm install "$REL" "$base_bin/charts/cairn" -n "$SYS_NS" --take-ownership "${release[@]}" \
    --set image.repository="${OLD_OPERATOR%:*}" --set image.tag="${OLD_OPERATOR##*:}" 2>&1) &&
    [[ "$(schema_version)" == 1 ]]; then
    installed=1
    pass "$name"
else
    helm status "$REL" -n "$SYS_NS" >/dev/null 2>&1 && installed=1
    fail "$name" "$out; schema version: $(schema_version)"
    exit 1
fi

kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: Flow
metadata: { name: research }
spec:
  image: $OLD_AGENT
  flow: research
  env:
    - { name: CAIRN_EXAMPLE_LLM_MS, value: "30000" }
    - { name: CAIRN_EXAMPLE_LEDGER, value: "-" }
---
apiVersion: cairn.dev/v1alpha1
kind: Flow
metadata: { name: flows }
spec:
  image: $OLD_FLOWS
  flow: approval
  env: [ { name: CAIRN_TEST_LOG, value: "-" } ]
EOF
{
    for i in 1 2 3 4 5 6; do cat <<EOF
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: approval-$i, labels: { upgrade-e2e: parked } }
spec: { flowRef: flows, input: { event: "go-$i" } }
EOF
    done
    for i in 1 2 3 4 5 6; do cat <<EOF
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: sleeper-$i, labels: { upgrade-e2e: parked } }
spec: { image: $OLD_FLOWS, flow: sleeper, input: { ms: 150000 }, env: [ { name: CAIRN_TEST_LOG, value: "-" } ] }
EOF
    done
    for i in 1 2 3 4 5 6 7 8; do cat <<EOF
---
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: research-$i, labels: { upgrade-e2e: parked } }
spec: { flowRef: research, input: { topic: "upgrades $i", breadth: 2 } }
EOF
    done
} | kubectl apply -n "$NS" -f - >/dev/null

name="under the old operator: 6 runs wait for an event, 6 sleep, 4 of the agents join their children"
waits_for() { # NAME JSONPATH VALUE
    [[ "$(kget fr "$1" -o jsonpath="$2")" == "$3" ]]
}
parked() {
    local i joining=0
    for i in 1 2 3 4 5 6; do waits_for "approval-$i" '{.status.waitingFor.event}' "go-$i" || return 1; done
    for i in 1 2 3 4 5 6; do waits_for "sleeper-$i" '{.status.phase}' Sleeping || return 1; done
    for i in 1 2 3 4 5 6 7 8; do
        [[ -n "$(kget fr "research-$i" -o jsonpath='{.status.waitingFor.children}')" ]] && joining=$((joining + 1))
    done
    ((joining >= 4))
}
if until_true 240 parked; then
    pass "$name ($(phases))"
else
    fail "$name" "phases: $(phases)"
fi

# --- helm upgrade to this tree --------------------------------------------------------------------
# FlowRuns holding the old operator's finalizer (the new one takes it off: it can outlive the
# operator's rights when a namespace is deleted).
held() { kget fr -o jsonpath='{range .items[*]}{.metadata.finalizers}{"\n"}{end}' | grep -c cairn.dev/cleanup || true; }
none_held() { [[ "$(held)" == 0 ]]; }
held_before=$(held)
name="helm upgrade to this tree applies the new migrations; the new operator takes the Lease"
old_pod=$(kubectl -n "$SYS_NS" get pods -l "app.kubernetes.io/component=operator" -o jsonpath='{.items[0].metadata.name}')
t0="$EPOCHREALTIME"
upgraded_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# --take-ownership, as for the install: a CRD this tree adds (FlowSchedule) may have been applied
# by another test or kept from another release.
if out=$(helm upgrade "$REL" "$REPO_ROOT/charts/cairn" -n "$SYS_NS" --take-ownership "${release[@]}" \
    --set image.repository="${NEW_OPERATOR%:*}" --set image.tag="${NEW_OPERATOR##*:}" 2>&1) &&
    kubectl -n "$SYS_NS" wait "pod/$old_pod" --for=delete --timeout=90s >/dev/null 2>&1 &&
    new_pod=$(kubectl -n "$SYS_NS" get pods -l "app.kubernetes.io/component=operator" -o jsonpath='{.items[0].metadata.name}') &&
    until_true 60 holder_is "$new_pod" &&
    [[ "$(schema_version)" -ge 2 ]]; then
    pass "$name (schema $(schema_version), $(since "$t0") s)"
else
    fail "$name" "${out:-}; schema $(schema_version); Lease held by '$(lease_holder)'"
fi

# The approvals, delivered under the new operator (the agents' once they reach their wait).
for i in 1 2 3 4 5 6; do
    printf 'apiVersion: cairn.dev/v1alpha1\nkind: FlowEvent\nmetadata: { name: go-%s }\nspec: { event: go-%s, payload: { approved: true, by: upgrade } }\n---\n' "$i" "$i"
done | kubectl apply -n "$NS" -f - >/dev/null
approve_agents() {
    local i pending=0
    for i in 1 2 3 4 5 6 7 8; do
        kget fe "approve-research-$i" -o name | grep -q . && continue
        if waits_for "research-$i" '{.status.waitingFor.event}' "approve-research-$i"; then
            printf 'apiVersion: cairn.dev/v1alpha1\nkind: FlowEvent\nmetadata: { name: approve-research-%s }\nspec: { event: approve-research-%s, payload: true }\n' "$i" "$i" |
                kubectl apply -n "$NS" -f - >/dev/null
        else
            pending=$((pending + 1))
        fi
    done
    ((pending == 0)) && all_in Succeeded
}

name="all 20 parked runs resume under the new operator and succeed"
if until_true 420 approve_agents; then
    pass "$name"
else
    fail "$name" "phases: $(phases)"
fi

name="the new operator took the old operator's finalizer off every FlowRun"
if until_true 60 none_held && ((held_before >= 20)); then
    pass "$name ($held_before held it before the upgrade)"
else
    fail "$name" "$(held) FlowRuns still hold it ($held_before did before the upgrade)"
fi

name="every pod resumed after the upgrade runs the digest its run started with (the old SDK)"
# Pods are by run: this namespace's pods created after the upgrade began, with their images.
resumed=$(kget pods -l app.kubernetes.io/managed-by=cairn -o jsonpath='{range .items[*]}{.metadata.creationTimestamp} {.status.containerStatuses[0].imageID}{"\n"}{end}' |
    awk -v t="$upgraded_at" '$1 >= t { print $2 }')
count=$(grep -c . <<<"$resumed" || true)
strangers=$(grep -v -e "$old_agent" -e "$old_flows" <<<"$resumed" || true)
if ((count >= 20)) && [[ -n "$old_agent" && -n "$old_flows" && -z "$strangers" ]]; then
    pass "$name ($count pods)"
else
    fail "$name" "$count pods after the upgrade; not an old digest: ${strangers:-none}"
fi

name="no step was paid twice, and every step ran once"
logs=$(for pod in $(kget pods -l app.kubernetes.io/managed-by=cairn -o name); do kubectl -n "$NS" logs "$pod" 2>/dev/null; done)
paid=$(grep -c $'^ledger\tpaid' <<<"$logs" || true)
paid_twice=$(grep $'^ledger\tpaid' <<<"$logs" | awk -F'\t' '{ n[$3 "/" $4]++ } END { t = 0; for (k in n) if (n[k] > 1) t++; print t }')
ran_twice=$(grep $'^effect\t' <<<"$logs" | awk -F'\t' '$3 ~ /^step:/ { n[$2 "/" $3]++ } END { t = 0; for (k in n) if (n[k] > 1) t++; print t }')
steps=$(grep -c $'^effect\t[^\t]*\tstep:' <<<"$logs" || true)
# 8 agents: plan, 2 summaries, draft, final = 5 paid calls each; 12 test flows: before, after.
if [[ "$paid" == 40 && "$paid_twice" == 0 && "$steps" == 24 && "$ran_twice" == 0 ]]; then
    pass "$name (40 calls paid once, 24 steps run once)"
else
    fail "$name" "paid $paid (40 expected), paid twice $paid_twice; steps $steps (24 expected), run twice $ran_twice"
fi

# --- helm rollback to the old release -------------------------------------------------------------
name="helm rollback: the old operator starts on the newer schema and runs a new FlowRun"
operator_images() {
    old_again=$(kubectl -n "$SYS_NS" get pods -l "app.kubernetes.io/component=operator" \
        -o jsonpath='{.items[*].spec.containers[0].image}' 2>&1)
    [[ "$old_again" == "$OLD_OPERATOR" ]]
}
if out=$(helm rollback "$REL" 1 -n "$SYS_NS" --wait --timeout 180s 2>&1) && until_true 90 operator_images; then
    # The FlowEvent once the run waits: an operator from before migration 0003 does not pass
    # the objects' creation times, so a FlowEvent it delivers before it admits the FlowRun
    # would not reach the run (README, "Upgrading").
    kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: after-rollback }
spec: { flowRef: flows, input: { event: go-after-rollback } }
EOF
    kubectl -n "$NS" wait fr/after-rollback --for=jsonpath='{.status.waitingFor.event}'=go-after-rollback --timeout=120s >/dev/null 2>&1 || true
    kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowEvent
metadata: { name: go-after-rollback }
spec: { event: go-after-rollback, payload: { approved: true, by: rollback } }
EOF
    if kubectl -n "$NS" wait fr/after-rollback --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s >/dev/null 2>&1; then
        pass "$name (schema $(schema_version))"
    else
        fail "$name" "after-rollback: $(kget fr after-rollback -o jsonpath='{.status}')"
    fi
else
    fail "$name" "${out:-}; operator pods run: ${old_again:-none}"
fi
