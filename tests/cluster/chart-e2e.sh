#!/usr/bin/env bash
# End-to-end test of the Helm chart (charts/cairn) on the real cluster (tests/cluster/up.sh):
# lint and schema, a server-side dry run of the rendered manifests, then a real install of the
# packaged chart (`helm package`, as users get it) whose operator runs in-cluster under the
# chart's RBAC (Secrets: create its per-attempt token Secrets, get/patch only the runner's),
# drives the example research agent to its approval,
# where `kubectl cairn` (the static cairn binary as the kubectl plugin, with a kubeconfig holding
# the token of a service account bound to the chart's approver roles) inspects the run through
# the API server's service proxy and approves it, on to Succeeded; keeps people without rights
# from approving; survives an upgrade that changes a CRD (and rolls the operator, the Lease
# moving to the new pod), and uninstalls leaving the CRDs.
#
# The release watches only its own fresh namespace, with its own Lease: other tests run a host
# operator against other namespaces at the same time. It works after the end-to-end tests of
# tests/e2e (which apply the CRDs with kubectl: the install takes them over with
# --take-ownership) and on a cold machine (up.sh builds the cluster, this builds cairn and the
# example agent).
#
# Each check prints PASS/FAIL; the last line is "N passed, M failed".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHART="$REPO_ROOT/charts/cairn"
OPERATOR_IMAGE=localhost/cairn-operator:dev
AGENT_IMAGE=localhost/cairn-agent:dev   # what examples/agent/k8s/flow.yaml names
TS="$(date +%s)"
REL="cairn-e2e-$TS"                # release (and fullname: cluster-scoped names are unique)
SYS_NS="cairn-system-$TS"          # the release namespace
NS="chart-e2e-$TS"                 # the namespace the operator watches, tenant A's
NS_B="chart-e2e-b-$TS"             # also watched: tenant B's
LEASE="cairn-e2e-$TS"
PREFIX="e2e-$TS-"                  # ResourceProfiles are cluster-scoped: keep ours apart
MARK="chart-e2e upgrade $TS"       # put into a CRD description by the upgrade check
DEPLOY="$REL-operator"
OPERATOR_SA="system:serviceaccount:$SYS_NS:$REL-operator"
passed=0 failed=0 installed="" dumped="" workdir=""
timings=()

# Elapsed seconds since $1 (an $EPOCHREALTIME), one decimal.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() {
    echo "FAIL: $1: $2"
    failed=$((failed + 1))
    dump_operator
}

# What the API server refused in an operator log: "cannot VERB resource R in API group G", counted.
refusals() {
    # shellcheck disable=SC1003  # literal backslashes in the pattern, not a quote escape
    grep -oE 'cannot [a-z]+ resource \\"[^\\]*\\" in API group \\"[^\\]*\\"' | tr -d '\\' | sort | uniq -c | grep .
}

refuses_of() { refusals <<<"$1" | tr -s ' \n' ' ' || true; }

# Once per run, while the operator exists: RBAC denials first, then the log's tail.
dump_operator() {
    [[ -n "$installed" && -z "$dumped" ]] || return 0
    dumped=1
    {
        echo "--- operator: what the API server refused it ---"
        kubectl -n "$SYS_NS" logs "deploy/$DEPLOY" --all-containers --tail=-1 2>&1 | refusals || echo "(nothing)"
        echo "--- operator log (last 40 lines) ---"
        kubectl -n "$SYS_NS" logs "deploy/$DEPLOY" --all-containers --tail=40 2>&1 || true
        echo "--- pods ---"
        kubectl -n "$SYS_NS" get pods -o wide 2>&1 || true
        kubectl -n "$NS" get fr,fe,pods 2>&1 || true
    } >&2
}

# FlowRuns carry the operator's finalizer: delete them while it runs (it also deletes their
# database rows); if it cannot, drop the finalizers so that the namespace can go.
delete_runs() {
    local ns all=0
    for ns in "$NS" "$NS_B"; do
        kubectl -n "$ns" delete fr --all --timeout=60s >/dev/null 2>&1 && continue
        all=1
        for fr in $(kubectl -n "$ns" get fr -o name 2>/dev/null); do
            kubectl -n "$ns" patch "$fr" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
        done
    done
    return "$all"
}

finish() {
    local rc=$?
    set +e
    (( rc == 0 && failed == 0 )) || dump_operator
    if [[ -n "$installed" ]]; then
        delete_runs
        helm uninstall "$REL" -n "$SYS_NS" --wait --timeout 60s >/dev/null 2>&1
    fi
    delete_runs 2>/dev/null
    kubectl delete namespace "$NS" "$NS_B" "$SYS_NS" --wait=false >/dev/null 2>&1
    drop_own_database
    kubectl delete resourceprofiles -l "app.kubernetes.io/instance=$REL" --wait=false >/dev/null 2>&1
    # An upgrade check that stopped half-way leaves its mark in the CRDs: put them back.
    if kubectl get crd flowruns.cairn.dev -o jsonpath='{.spec.versions[0].schema.openAPIV3Schema.description}' 2>/dev/null | grep -q "$MARK"; then
        kubectl apply -f "$REPO_ROOT/crds/generated/crds.yaml" >/dev/null 2>&1
    fi
    [[ -n "$workdir" ]] && rm -rf "$workdir"
    ((${#timings[@]})) && echo "timings: ${timings[*]}"
    echo "$passed passed, $failed failed"
    (( failed == 0 && rc == 0 )) || exit 1
}
trap finish EXIT

wait_jsonpath() { # NAMESPACE KIND/NAME JSONPATH VALUE TIMEOUT
    kubectl -n "$1" wait "$2" --for=jsonpath="$3"="$4" --timeout="$5" >/dev/null 2>&1
}

# The Lease's holder is "<pod name>-<random>"; prints the pod part.
lease_holder() {
    kubectl -n "$SYS_NS" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null | sed 's/-[0-9a-f]*$//'
}
wait_lease_held_by() { # POD TIMEOUT_SECONDS
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        [[ "$(lease_holder)" == "$1" ]] && return 0
        sleep 0.5
    done
    return 1
}

# --- set-up: cluster, binaries, images ----------------------------------------------------------
kubeconfig="$("$CLUSTER_DIR/up.sh" | tail -n 1)"
# shellcheck disable=SC1091
source "$STATE_DIR/env"
# shellcheck disable=SC2153  # KUBECONFIG is set by the env file sourced above
[[ "$KUBECONFIG" == "$kubeconfig" ]] || die "up.sh printed $kubeconfig, env file says $KUBECONFIG"
own_database "${NS//-/_}"

log "building the operator and the example agent"
t0="$EPOCHREALTIME"
build_static_bins
timings+=("build=$(since "$t0")s")
workdir="$(mktemp -d)"
# The operator image and the plugin are copies of the same binary (a concurrent build cannot
# change them under the test); the plugin is named kubectl-cairn, on a PATH of our own.
mkdir -p "$workdir/bin" "$workdir/image"
cp "$(static_bin_dir)/cairn" "$workdir/image/cairn"
cp "$workdir/image/cairn" "$workdir/bin/kubectl-cairn"
export PATH="$workdir/bin:$PATH"
export NO_COLOR=1
t0="$EPOCHREALTIME"
"$CLUSTER_DIR/image.sh" "$OPERATOR_IMAGE" "$workdir/image/cairn" >/dev/null
"$CLUSTER_DIR/image.sh" "$AGENT_IMAGE" "$(static_bin_dir)/agent" >/dev/null
timings+=("images=$(since "$t0")s")
started="$EPOCHREALTIME"

# Both namespaces enforce the restricted Pod Security Standard: the operator and its flow pods
# must be admitted under it.
for ns in "$SYS_NS" "$NS" "$NS_B"; do
    kubectl create namespace "$ns" >/dev/null
    kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
        pod-security.kubernetes.io/warn=restricted >/dev/null
done
# The server-side dry run of ResourceProfiles needs their CRD; the install takes the CRDs over.
if ! kubectl get crd resourceprofiles.cairn.dev >/dev/null 2>&1; then
    kubectl apply -f "$REPO_ROOT/crds/generated/crds.yaml" >/dev/null
    kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
fi

# --- 1. the chart's own checks ----------------------------------------------------------------
name="the chart's CRDs (files/crds.yaml) are crds/generated/crds.yaml"
if out=$(diff -u "$REPO_ROOT/crds/generated/crds.yaml" "$CHART/files/crds.yaml" 2>&1); then
    pass "$name"
else
    fail "$name" "run: cp crds/generated/crds.yaml charts/cairn/files/crds.yaml; $(head -n 20 <<<"$out")"
fi

name="helm lint --strict is clean (defaults, and ci/test-values.yaml)"
if out=$(helm lint --strict "$CHART" 2>&1 && helm lint --strict "$CHART" -f "$CHART/ci/test-values.yaml" 2>&1) &&
    ! grep -qE '^\[(WARNING|ERROR)\]' <<<"$out"; then
    pass "$name"
else
    fail "$name" "$out"
fi

# refuses VALUES... EXPECTED: helm refuses to install with these values, saying EXPECTED.
refuses() {
    local expected="${*: -1}" out
    if out=$(helm install "$REL-bad" "$CHART" -n "$SYS_NS" "${@:1:$#-1}" 2>&1); then
        helm uninstall "$REL-bad" -n "$SYS_NS" >/dev/null 2>&1 || true
        echo "installed"
        return 1
    fi
    grep -qF -- "$expected" <<<"$out" || { echo "$out"; return 1; }
}
db=(--set "database.url=postgres://u:p@db.example:5432/cairn")
name="helm install refuses bad values with a clear message"
problems=""
check() { local what="$1"; shift; out=$(refuses "$@") || problems+="[$what: $(tr '\n' ' ' <<<"$out")] "; }
check "replicas as a string" "${db[@]}" --set-string replicaCount=two "at '/replicaCount': got string, want integer"
check "unknown profile field" "${db[@]}" --set resourceProfiles.profiles.small.cpu=1 "additional properties 'cpu' not allowed"
check "misspelt value" "${db[@]}" --set replicas=2 "additional properties 'replicas' not allowed"
check "no database" "Cairn needs a database: set database.url"
check "two databases" "${db[@]}" --set database.existingSecret=pg "Set only one of database.url and database.existingSecret"
check "not a Postgres URL" --set database.url=mysql://x "does not match pattern"
check "bad watched namespace" "${db[@]}" --set 'watchNamespaces={Team_A}' "at '/watchNamespaces/0'"
check "not an object store URL" "${db[@]}" --set artifacts.url=ftp://x/y "at '/artifacts/url'"
check "an artifact store behind a NetworkPolicy with no way to it" "${db[@]}" --set artifacts.url=s3://b/p \
    --set networkPolicy.enabled=true --set-json 'networkPolicy.apiServer.cidrs=["10.96.0.1/32"]' \
    --set-json 'networkPolicy.database.to=[{"ipBlock":{"cidr":"10.88.0.1/32"}}]' "needs networkPolicy.artifactStore.to"
check "not an OTLP endpoint" "${db[@]}" --set traces.endpoint=collector:4318 "at '/traces/endpoint'"
check "a trace collector behind a NetworkPolicy with no way to it" "${db[@]}" \
    --set traces.endpoint=http://collector:4318 --set networkPolicy.enabled=true \
    --set-json 'networkPolicy.apiServer.cidrs=["10.96.0.1/32"]' \
    --set-json 'networkPolicy.database.to=[{"ipBlock":{"cidr":"10.88.0.1/32"}}]' "needs networkPolicy.traces.to"
if [[ -z "$problems" ]] && ! helm status "$REL-bad" -n "$SYS_NS" >/dev/null 2>&1; then pass "$name"; else fail "$name" "$problems"; fi

# --- 2. the rendered manifests pass the API server's validation --------------------------------
name="helm template | kubectl apply --dry-run=server passes (one watched namespace, all namespaces; restricted pods)"
# The server checks custom resources (the profiles) against the CRDs it has: this tree's.
kubectl apply -f "$CHART/files/crds.yaml" >/dev/null
render_ok=1 out=""
for namespaces in "[\"$NS\"]" "[]"; do
    if ! out=$(helm template "$REL" "$CHART" -n "$SYS_NS" -f "$CHART/ci/test-values.yaml" \
        --set-json "watchNamespaces=$namespaces" --set metrics.serviceMonitor.enabled=false \
        --set resourceProfiles.namePrefix="$PREFIX" --set leaderElection.leaseName="$LEASE" 2>&1 |
        kubectl apply --dry-run=server -f - 2>&1) || grep -qiE 'PodSecurity|error' <<<"$out"; then
        render_ok=""
        break
    fi
done
if [[ -n "$render_ok" ]]; then pass "$name"; else fail "$name" "$out"; fi

name="the ServiceMonitor renders only when enabled, selecting the operator's Service"
monitor=$(helm template "$REL" "$CHART" -n "$SYS_NS" "${db[@]}" --set metrics.serviceMonitor.enabled=true \
    --show-only templates/servicemonitor.yaml 2>&1 || true)
absent=$(helm template "$REL" "$CHART" -n "$SYS_NS" "${db[@]}" 2>&1 | grep -c '^kind: ServiceMonitor' || true)
if [[ "$absent" == 0 ]] && grep -q '^apiVersion: monitoring.coreos.com/v1$' <<<"$monitor" &&
    grep -q '^kind: ServiceMonitor$' <<<"$monitor" && grep -q -- '- port: http$' <<<"$monitor" &&
    grep -q 'path: /metrics$' <<<"$monitor" && grep -q 'app.kubernetes.io/component: operator$' <<<"$monitor"
then pass "$name"; else fail "$name" "rendered $absent by default; enabled: $monitor"; fi

name="with traces.endpoint the operator gets the OTLP settings (headers as a file from their Secret), and spans may leave"
rendered=$(helm template "$REL" "$CHART" -n "$SYS_NS" -f "$CHART/ci/test-values.yaml" \
    --set networkPolicy.flowPods.enabled=true \
    --set-json 'networkPolicy.flowPods.database.to=[{"ipBlock":{"cidr":"10.0.0.11/32"}}]' 2>&1 || true)
collector_rules=$(grep -c 'kubernetes.io/metadata.name: observability' <<<"$rendered" || true)
if grep -q 'name: OTEL_EXPORTER_OTLP_ENDPOINT' <<<"$rendered" &&
    grep -q 'value: "http://otel-collector.observability:4318"' <<<"$rendered" &&
    grep -A1 'name: CAIRN_FLOW_PODS_OTLP_ENDPOINT' <<<"$rendered" | grep -q 'otel-agent.observability' &&
    grep -q 'name: CAIRN_OTLP_HEADERS_FILE' <<<"$rendered" && grep -q 'secretName: "otel-headers"' <<<"$rendered" &&
    ! grep -q 'name: OTEL_EXPORTER_OTLP_HEADERS' <<<"$rendered" &&
    grep -q -- '- port: 4318' <<<"$rendered" && [[ "$collector_rules" -ge 3 ]]; then
    pass "$name"
else
    fail "$name" "collector egress rules: $collector_rules; $(grep -A3 OTEL_ <<<"$rendered" | tr '\n' ' ')"
fi

# --- 3. install ---------------------------------------------------------------------------------
# As users install it: the packaged chart (what the release pushes), not the folder.
name="helm package makes the chart archive users install"
if out=$(helm package "$CHART" --destination "$workdir/package" 2>&1) &&
    package="$(sed -n 's/^Successfully packaged chart and saved it to: //p' <<<"$out")" &&
    [[ -f "$package" ]] && contents="$(tar -tzf "$package")" &&
    grep -qx 'cairn/files/crds.yaml' <<<"$contents"; then
    pass "$name ($(basename "$package"))"
else
    fail "$name" "$out"
    package="$CHART"
fi

name="helm install: the operator Deployment becomes Available and takes its Lease"
t0="$EPOCHREALTIME"
chart_database_args "$SYS_NS"   # over verify-full, the CA from a Secret
# The cluster's S3 server as the artifact store, its credentials in a Secret of the user's own.
kubectl -n "$SYS_NS" create secret generic "$REL-s3" --from-literal=AWS_ACCESS_KEY_ID="$CAIRN_CLUSTER_S3_ACCESS_KEY" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$CAIRN_CLUSTER_S3_SECRET_KEY" --from-literal=AWS_ENDPOINT="$CAIRN_CLUSTER_S3_ENDPOINT" \
    --from-literal=AWS_ALLOW_HTTP=true --from-literal=AWS_REGION=us-east-1 >/dev/null
if out=$(helm install "$REL" "$package" -n "$SYS_NS" --take-ownership "${CHART_DATABASE_ARGS[@]}" \
    --set artifacts.url="s3://$CAIRN_CLUSTER_S3_BUCKET/$NS" --set artifacts.credentialsSecret="$REL-s3" \
    --set traces.endpoint="$CAIRN_CLUSTER_OTLP_ENDPOINT" \
    --set "watchNamespaces={$NS,$NS_B}" \
    --set leaderElection.leaseName="$LEASE" \
    --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" --set image.pullPolicy=Never \
    --set resourceProfiles.namePrefix="$PREFIX" \
    --wait --timeout 180s 2>&1); then
    installed=1
    kubectl -n "$SYS_NS" wait "deploy/$DEPLOY" --for=condition=Available --timeout=60s >/dev/null 2>&1 || true
    install_time=$(since "$t0")
    pod=$(kubectl -n "$SYS_NS" get pods -l "app.kubernetes.io/instance=$REL" -o jsonpath='{.items[0].metadata.name}')
    if wait_lease_held_by "$pod" 30; then
        pass "$name (${install_time}s to Available, $(since "$t0")s to leading)"
        timings+=("install=${install_time}s")
    else
        fail "$name" "Lease $SYS_NS/$LEASE held by '$(lease_holder)', not $pod"
    fi
else
    helm status "$REL" -n "$SYS_NS" >/dev/null 2>&1 && installed=1
    fail "$name" "$out"
fi

name="the default ResourceProfiles exist (gpu: one nvidia.com/gpu and its toleration)"
profiles=$(kubectl get resourceprofiles -l "app.kubernetes.io/instance=$REL" -o name | sort | tr '\n' ' ')
gpu=$(kubectl get resourceprofile "${PREFIX}gpu" -o jsonpath='{.spec.resources.limits.nvidia\.com/gpu} {.spec.tolerations[0].key}' 2>&1 || true)
want="resourceprofile.cairn.dev/${PREFIX}gpu resourceprofile.cairn.dev/${PREFIX}large resourceprofile.cairn.dev/${PREFIX}medium resourceprofile.cairn.dev/${PREFIX}small "
if [[ "$profiles" == "$want" && "$gpu" == "1 nvidia.com/gpu" ]]; then pass "$name"; else fail "$name" "profiles: $profiles; gpu: $gpu"; fi

name="the operator's rights are scoped: pods of its namespace only; Secrets: create, delete only tokens, get/patch only the runner's"
denied=""
can() { kubectl auth can-i "$@" --as="$OPERATOR_SA" 2>/dev/null || true; }
[[ "$(can create pods -n "$NS")" == yes ]] || denied+="cannot create pods in $NS; "
[[ "$(can create secrets -n "$NS")" == yes ]] || denied+="cannot create (token) Secrets; "
[[ "$(can get secrets/cairn-runner-db -n "$NS")" == yes ]] || denied+="cannot read its runner Secret; "
[[ "$(can patch secrets/cairn-runner-db -n "$NS")" == yes ]] || denied+="cannot apply its runner Secret; "
[[ "$(can patch leases/"$LEASE" -n "$SYS_NS")" == yes ]] || denied+="cannot renew its Lease; "
[[ "$(can create pods -n default)" == no ]] || denied+="may create pods in default; "
[[ "$(can create secrets -n default)" == no ]] || denied+="may create Secrets in default; "
for verb in get patch update; do
    for secret in other cairn-token-00000000-0000-4000-8000-000000000000-a1; do
        [[ "$(can "$verb" "secrets/$secret" -n "$NS")" == no ]] || denied+="may $verb Secret $secret; "
    done
done
[[ "$(can update secrets/cairn-runner-db -n "$NS")" == no ]] || denied+="may update (not just apply) its runner Secret; "
# RBAC grants delete on Secrets (it cannot name a prefix); the chart's admission policy lets the
# operator delete token Secrets only. Server dry runs go through admission like real deletes.
token_secret=cairn-token-00000000-0000-4000-8000-000000000000-a1
kubectl -n "$NS" create secret generic "$token_secret" --from-literal=token=x >/dev/null
kubectl -n "$NS" create secret generic other-secret --from-literal=x=y >/dev/null
delete_as_operator() { kubectl -n "$NS" delete secret "$1" --dry-run=server --as="$OPERATOR_SA" 2>&1 || true; }
refused=$(delete_as_operator other-secret)
[[ "$refused" == *"may delete only attempts' token Secrets"* ]] || denied+="may delete Secret other-secret: $refused; "
allowed=$(delete_as_operator "$token_secret")
[[ "$allowed" == *deleted* ]] || denied+="cannot delete a token Secret: $allowed; "
kubectl -n "$NS" delete secret "$token_secret" other-secret >/dev/null
[[ "$(can list secrets -n "$NS")" == no ]] || denied+="may list Secrets; "
[[ "$(can watch secrets -n "$NS")" == no ]] || denied+="may watch Secrets; "
[[ "$(can list flowruns.cairn.dev -A)" == no ]] || denied+="may list FlowRuns cluster-wide; "
[[ "$(can delete customresourcedefinitions)" == no ]] || denied+="may delete CRDs; "
if [[ -z "$denied" ]]; then pass "$name"; else fail "$name" "$denied"; fi

# --- 4. the example, run by the in-cluster operator -------------------------------------------
# The example's Flow asks for profile `small`; this release's is "${PREFIX}small" (a fresh
# cluster has no other).
sed "s/profile: small/profile: ${PREFIX}small/" "$REPO_ROOT/examples/agent/k8s/flow.yaml" | kubectl -n "$NS" apply -f - >/dev/null
t0="$EPOCHREALTIME"
kubectl -n "$NS" apply -f "$REPO_ROOT/examples/agent/k8s/flowrun.yaml" >/dev/null
# Tenant B's run, read (or not) through the read API in section 5.
sed "s/profile: small/profile: ${PREFIX}small/" "$REPO_ROOT/examples/agent/k8s/flow.yaml" | kubectl -n "$NS_B" apply -f - >/dev/null
sed -e 's/name: research-demo/name: tenant-b/' -e 's/breadth: 3/breadth: 1/' "$REPO_ROOT/examples/agent/k8s/flowrun.yaml" |
    kubectl -n "$NS_B" apply -f - >/dev/null
name="the example FlowRun reaches Waiting for approve-research-demo"
if wait_jsonpath "$NS" fr/research-demo '{.status.waitingFor.event}' approve-research-demo 180s; then
    waiting_time=$(since "$t0")
    pass "$name (${waiting_time}s)"
    timings+=("waiting=${waiting_time}s")
    # Seconds here are normal; more means something queued (the running budget is shared by
    # every operator on this database) or a loaded machine: show what happened when.
    if awk -v t="$waiting_time" 'BEGIN { exit !(t > 30) }'; then
        {
            echo "--- slow: events in $NS ---"
            kubectl -n "$NS" get events --sort-by=.metadata.creationTimestamp 2>&1 | tail -n 40
            echo "--- operator log (last 30 lines) ---"
            kubectl -n "$SYS_NS" logs "deploy/$DEPLOY" --tail=30 2>&1
        } >&2
    fi
else
    fail "$name" "status: $(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status}' 2>&1)"
fi

name="the gpu profile serves no namespace until listed: a run asking for it is refused (ProfileNotAllowed), naming it"
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: {name: wants-gpu}
spec: {flowRef: research, profile: ${PREFIX}gpu, input: {topic: gpus, breadth: 1}}
EOF
if wait_jsonpath "$NS" fr/wants-gpu '{.status.conditions[?(@.type=="Ready")].reason}' ProfileNotAllowed 60s &&
    [[ "$(kubectl -n "$NS" get fr wants-gpu -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')" == *"\"${PREFIX}gpu\""* ]] &&
    ! kubectl -n "$NS" get pods -l app.kubernetes.io/managed-by=cairn -o name | grep -q wants-gpu; then
    pass "$name"
else
    fail "$name" "status: $(kubectl -n "$NS" get fr wants-gpu -o jsonpath='{.status}' 2>&1)"
fi
kubectl -n "$NS" delete fr wants-gpu --wait=false >/dev/null

name="flow pods run as the flow account, without an API token, under the restricted standard"
accounts=$(kubectl -n "$NS" get pods -l app.kubernetes.io/managed-by=cairn \
    -o jsonpath='{range .items[*]}{.spec.serviceAccountName}/{.spec.automountServiceAccountToken} {end}' | tr ' ' '\n' | sort -u | tr '\n' ' ')
flow_sa=$(kubectl -n "$NS" get sa cairn-flow -o jsonpath='{.automountServiceAccountToken}' 2>&1 || true)
if [[ "$accounts" == "cairn-flow/false " && "$flow_sa" == false ]]; then
    pass "$name"
else
    fail "$name" "pods: $accounts; cairn-flow automount: $flow_sa"
fi

# tenants_read_only_their_runs: two tenants (kubectl --as), each a viewer of its own namespace,
# read their own run through every path and nothing of the other's; a third identity, allowed
# the operator's Service proxy, reads nothing; a direct connection to the operator's port is
# refused, even with the cluster admin's client certificate and a forged user header.
tenants_read_only_their_runs() {
    local name a_own a_other b_own b_other a_list b_list a_kc a_kc_other via_https via_http pod_ip direct forged
    kubectl -n "$NS" create rolebinding tenant-a --clusterrole="$REL-viewer" --user=tenant-a >/dev/null
    kubectl -n "$NS_B" create rolebinding tenant-b --clusterrole="$REL-viewer" --user=tenant-b >/dev/null
    kubectl -n "$SYS_NS" create role proxy-user --verb=get --resource=services,services/proxy >/dev/null
    kubectl -n "$SYS_NS" create rolebinding proxy-user --role=proxy-user --user=proxy-user >/dev/null
    wait_jsonpath "$NS_B" fr/tenant-b "{.status.waitingFor.event}" approve-tenant-b 180s || true
    raw_as() { kubectl get --raw "$runs_api/$2" --as "$1" 2>&1 || true; }
    name="two tenants (kubectl --as) each read their own run and nothing of the other's"
    a_own=$(raw_as tenant-a "$NS/runs/research-demo")
    b_own=$(raw_as tenant-b "$NS_B/runs/tenant-b")
    a_list=$(raw_as tenant-a "$NS/runs")
    a_other=$(raw_as tenant-a "$NS_B/runs/tenant-b")
    b_other=$(raw_as tenant-b "$NS/runs/research-demo")
    b_list=$(raw_as tenant-b "$NS/runs")
    a_kc=$(kubectl cairn inspect research-demo -n "$NS" --as tenant-a 2>&1 || true)
    a_kc_other=$(kubectl cairn inspect tenant-b -n "$NS_B" --as tenant-a 2>&1 || true)
    if [[ "$a_own" == *'"name":"research-demo"'*'"steps":'* && "$b_own" == *'"name":"tenant-b"'*'"steps":'* &&
        "$a_list" == *'"name":"research-demo"'* && "$a_list" != *'"name":"tenant-b"'* &&
        "$a_other" == *Forbidden*'User "tenant-a" cannot get flowruns.cairn.dev "tenant-b"'* &&
        "$b_other" == *Forbidden*'cannot get flowruns.cairn.dev'* && "$b_list" == *Forbidden*'cannot list flowruns.cairn.dev'* &&
        "$a_kc" == *STEP*plan* && "$a_kc_other" == *forbidden* && "$a_kc_other" != *STEP* ]]; then
        pass "$name"
    else
        fail "$name" "A own: $(head -c 200 <<<"$a_own"); B own: $(head -c 200 <<<"$b_own"); A list: $(head -c 200 <<<"$a_list"); A other: $a_other; B other: $b_other; B list: $b_list; inspect: $a_kc; other: $a_kc_other"
    fi
    name="an identity allowed the operator's Service proxy reads nothing (TLS port refuses it, plain port serves no runs)"
    via_https=$(kubectl get --raw "/api/v1/namespaces/$SYS_NS/services/https:cairn-operator:443/proxy$runs_api/$NS/runs/research-demo" --as proxy-user 2>&1 || true)
    via_http=$(kubectl get --raw "/api/v1/namespaces/$SYS_NS/services/cairn-operator:http/proxy$runs_api/$NS/runs/research-demo" --as proxy-user 2>&1 || true)
    if [[ "$via_https" != *'"steps"'* && "$via_http" != *'"steps"'* && "$via_http" == *NotFound* ]] &&
        [[ "$(raw_as proxy-user "$NS/runs/research-demo")" == *Forbidden* ]]; then
        pass "$name"
    else
        fail "$name" "https port: $(head -c 300 <<<"$via_https"); http port: $(head -c 300 <<<"$via_http")"
    fi
    name="a direct connection to the operator's read API port is refused, with any certificate but the front proxy's"
    pod_ip=$(kubectl -n "$SYS_NS" get pods -l "app.kubernetes.io/instance=$REL" -o jsonpath='{.items[0].status.podIP}')
    direct=$(curl -sS -k --max-time 10 -H 'X-Remote-User: system:admin' \
        "https://$pod_ip:8443$runs_api/$NS/runs/research-demo" 2>&1 || true)
    forged=$(curl -sS -k --max-time 10 -H 'X-Remote-User: system:admin' -H 'X-Remote-Group: system:masters' \
        --cert "$STATE_DIR/pki/admin.crt" --key "$STATE_DIR/pki/admin.key" \
        "https://$pod_ip:8443$runs_api/$NS/runs/research-demo" 2>&1 || true)
    if [[ -n "$pod_ip" && "$direct" != *'"steps"'* && "$forged" != *'"steps"'* && "$direct" == *curl:* && "$forged" == *curl:* ]]; then
        pass "$name"
    else
        fail "$name" "pod $pod_ip; no certificate: $(head -c 300 <<<"$direct"); admin certificate: $(head -c 300 <<<"$forged")"
    fi
}

# --- 5. who may approve: kubectl cairn, as service accounts with the chart's user roles ---------
# Each person is a service account of $NS with a kubeconfig of its own: the cluster's server and
# CA from the admin kubeconfig and a short-lived token (`kubectl create token`), so that
# `kubectl cairn` authenticates exactly as a user would, with no impersonation.
approve="$REPO_ROOT/examples/agent/k8s/approve.yaml"
runs_api="/apis/api.cairn.dev/v1alpha1/namespaces"
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
if [[ -z "$ca" ]]; then
    ca_file=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')
    ca=$(base64 -w0 <"$ca_file")
fi
# kubeconfig_for SA: creates service account SA in $NS; prints the path of its kubeconfig.
kubeconfig_for() {
    local file="$workdir/$1.kubeconfig" token
    kubectl -n "$NS" create serviceaccount "$1" >/dev/null
    token=$(kubectl -n "$NS" create token "$1" --duration=10m)
    (umask 077 && cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters: [{ name: cairn-e2e, cluster: { server: "$server", certificate-authority-data: "$ca" } }]
users: [{ name: $1, user: { token: "$token" } }]
contexts: [{ name: $1, context: { cluster: cairn-e2e, user: $1, namespace: "$NS" } }]
current-context: $1
EOF
    )
    echo "$file"
}
# as_user KUBECONFIG_FILE kubectl ARGS...: kubectl as that user; output in $out, exit code in $rc.
as_user() { local file="$1"; shift; rc=0; out="$(KUBECONFIG="$file" "$@" 2>&1)" || rc=$?; }
# kc_as KUBECONFIG_FILE ARGS...: `kubectl cairn ARGS` in $NS.
kc_as() { local file="$1" cmd="$2"; shift 2; as_user "$file" kubectl cairn "$cmd" "$@" -n "$NS"; }
has() { local t; for t in "$@"; do [[ "$out" == *"$t"* ]] || return 1; done; }
# shellcheck disable=SC2001
show() { echo "    --- $1 ---"; sed 's/^/    | /' <<<"$2"; }
nobody=$(kubeconfig_for nobody)
viewer=$(kubeconfig_for viewer)
approver=$(kubeconfig_for approver)
kubectl -n "$NS" create rolebinding viewer --clusterrole="$REL-viewer" --serviceaccount="$NS:viewer" >/dev/null
kubectl -n "$NS" create rolebinding approver --clusterrole="$REL-approver" --serviceaccount="$NS:approver" >/dev/null

name="a user without rights cannot approve (kubectl create, kubectl cairn approve), nor read the run"
as_user "$nobody" kubectl -n "$NS" create -f "$approve"; created="$out"
as_user "$nobody" kubectl get --raw "$runs_api/$NS/runs/research-demo"; proxy="$out"
kc_as "$nobody" approve research-demo
if [[ "$created" == *Forbidden*"cannot create resource \"flowevents\""* && "$proxy" == *Forbidden*"cannot get flowruns.cairn.dev"* ]] &&
    [[ "$rc" != 0 ]] && has "not allowed to" "forbidden" &&
    ! kubectl -n "$NS" get fe approve-research-demo >/dev/null 2>&1; then
    pass "$name (kubectl cairn approve: exit $rc)"
    show "kubectl cairn approve research-demo (no rights)" "$out"
else
    fail "$name" "create: $created; read API: $proxy; kubectl cairn approve: exit $rc: $out"
fi

name="a viewer sees the run but kubectl cairn approve is forbidden to create its FlowEvent"
kc_as "$viewer" runs; viewer_runs_rc="$rc" viewer_runs="$out"
kc_as "$viewer" approve research-demo
if [[ "$viewer_runs_rc" == 0 && "$viewer_runs" == *research-demo* && "$rc" == 1 ]] &&
    has "not allowed to create" "flowevents" "forbidden" &&
    ! kubectl -n "$NS" get fe approve-research-demo >/dev/null 2>&1; then
    pass "$name"
    show "kubectl cairn approve research-demo (viewer)" "$out"
else
    fail "$name" "runs: exit $viewer_runs_rc: $viewer_runs; approve: exit $rc: $out"
fi

name="a user bound to the approver role reads the run through the read API (kubectl get --raw)"
as_user "$approver" kubectl get --raw "$runs_api/$NS/runs/research-demo"
if [[ "$rc" == 0 && "$out" == *'"name":"research-demo"'* && "$out" == *'"phase":"Waiting"'* ]]; then
    pass "$name"
else
    fail "$name" "exit $rc: $(head -c 300 <<<"$out")"
fi

tenants_read_only_their_runs

name="kubectl cairn runs (as the approver) lists the run waiting for its approval"
kc_as "$approver" runs
if [[ "$rc" == 0 ]] && has NAME PHASE research-demo Waiting "event approve-research-demo"; then
    pass "$name"
    show "kubectl cairn runs" "$out"
else
    fail "$name" "exit $rc: $out"
fi

name="kubectl cairn inspect (as the approver, through the read API) shows the steps and the pending question"
kc_as "$approver" inspect research-demo
if [[ "$rc" == 0 ]] && has "Phase:     Waiting" "Question:" '"type":"boolean"' "kubectl cairn approve research-demo" \
    STEP plan draft Attempts research-demo-a1 && [[ "$out" != *"warning:"* ]]; then
    pass "$name"
    show "kubectl cairn inspect research-demo (waiting)" "$out"
else
    fail "$name" "exit $rc: $out"
fi

name="kubectl cairn approve (as the approver) answers the question; the run Succeeds"
t0="$EPOCHREALTIME"
kc_as "$approver" approve research-demo --wait --timeout 180s; approved_rc="$rc" approved="$out"
kc_as "$approver" wait research-demo --for succeeded --timeout 180s
if [[ "$approved_rc" == 0 && "$approved" == *"research-demo: approved event approve-research-demo with payload true"* &&
    "$approved" == *"research-demo: resumed"* && "$rc" == 0 ]] &&
    [[ "$(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status.phase}')" == Succeeded ]]; then
    succeeded_time=$(since "$t0")
    pass "$name (${succeeded_time}s after the approval)"
    timings+=("succeeded=${succeeded_time}s")
    show "kubectl cairn approve research-demo --wait" "$approved"
else
    fail "$name" "approve: exit $approved_rc: $approved; wait: exit $rc: $out; status: $(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status}' 2>&1)"
fi

name="kubectl cairn inspect (as the approver) shows the run Succeeded, with its result"
kc_as "$approver" inspect research-demo
if [[ "$rc" == 0 ]] && has "Phase:     Succeeded" "Result:" "Finished:" final && [[ "$out" != *"warning:"* ]]; then
    pass "$name"
    show "kubectl cairn inspect research-demo (succeeded)" "$out"
else
    fail "$name" "exit $rc: $out"
fi

name="every attempt had a token Secret of its own, deleted by the operator once the attempt ended"
run_id=$(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status.runId}')
attempts=$(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status.attempt}')
want=""
for ((i = 1; i <= ${attempts:-0}; i++)); do want+="cairn-token-$run_id-a$i "; done
# The pods (all kept: fewer than flowPods.finishedPodsKept) name the Secret their token came from.
used=$(kubectl -n "$NS" get pods -l "cairn.dev/run=$run_id" \
    -o jsonpath='{range .items[*]}{.spec.containers[0].env[?(@.name=="CAIRN_TOKEN")].valueFrom.secretKeyRef.name}{"\n"}{end}' |
    sort -V | tr '\n' ' ')
tokens_left() { kubectl -n "$NS" get secrets -l "cairn.dev/run=$run_id" -o name 2>/dev/null; }
no_tokens_left() { [[ -z "$(tokens_left)" ]]; }
for ((i = 0; i < 30; i++)); do no_tokens_left && break; sleep 1; done
if [[ -n "$run_id" && "${attempts:-0}" -ge 2 && "$used" == "$want" ]] && no_tokens_left; then
    pass "$name ($attempts attempts)"
else
    fail "$name" "run $run_id, $attempts attempts; pods used: $used (want $want); Secrets left: $(tokens_left | tr '\n' ' ')"
fi

name="the operator and the flow pods reach Postgres over TLS (verify-full, the CA from database.caSecret)"
secret_value() { kubectl -n "$NS" get secret cairn-runner-db -o jsonpath="{.data.$1}" 2>/dev/null | base64 -d; }
runner_url=$(secret_value database-url)
runner_ca=$(secret_value 'ca\.crt')
# The operator's connections now, and this check's own: every one to this test's database.
tls=$(psql "$CAIRN_CLUSTER_PG_URL" -XAt -F ' ' -c "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
    FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database()" 2>&1 || true)
if [[ "$runner_url" == *sslmode=verify-full* && "$runner_url" == *sslrootcert=%2Fetc%2Fcairn%2Fdb%2Fca.crt* &&
    "$runner_ca" == "$(cat "$CAIRN_CLUSTER_PG_CA")" && "$tls" =~ ^([0-9]+)\ 0$ && ${BASH_REMATCH[1]} -ge 2 ]]; then
    pass "$name (${BASH_REMATCH[1]} connections, all TLS)"
else
    fail "$name" "runner URL parameters: ${runner_url#*\?}; runner CA $( [[ -n "$runner_ca" ]] && echo present || echo missing); TLS / plaintext connections: $tls"
fi

name="the chart gives the operator and flow pods the artifact store (artifacts.url, credentialsSecret)"
artifacts=$(secret_value artifacts)
if [[ "$artifacts" == *"\"url\":\"s3://$CAIRN_CLUSTER_S3_BUCKET/$NS\""* && "$artifacts" == *aws_secret_access_key* ]]; then
    pass "$name"
else
    fail "$name" "the runner Secret's artifacts: ${artifacts:+present, }$(grep -o '"url":"[^"]*"' <<<"$artifacts")"
fi

name="with traces.endpoint the run is one trace: its run span from the operator, its steps' from its pods"
# The cluster's collector writes what it receives to $CAIRN_CLUSTER_SPANS; the operator exports
# a run's own spans within seconds of its end.
trace_summary() {
    python3 - "$CAIRN_CLUSTER_SPANS" "$NS" research-demo <<'PY'
import json, sys
path, ns, run = sys.argv[1:]
spans = []
for line in open(path):
    try:
        batch = json.loads(line)
    except ValueError:
        continue
    for r in batch.get("resourceSpans", []):
        service = next((a["value"].get("stringValue") for a in r["resource"].get("attributes", [])
                        if a["key"] == "service.name"), "")
        for sc in r.get("scopeSpans", []):
            for s in sc.get("spans", []):
                attrs = {a["key"]: list(a["value"].values())[0] for a in s.get("attributes", [])}
                spans.append((service, s["traceId"], s["spanId"], s.get("parentSpanId", ""), s["name"], attrs))
root = [s for s in spans if s[4] == "run research" and s[5].get("cairn.run.name") == run
        and s[5].get("k8s.namespace.name") == ns]
if not root:
    sys.exit(1)
trace = [s for s in spans if s[1] == root[0][1]]
attempts = {s[2] for s in trace if s[4].startswith("attempt ") and s[3] == root[0][2]}
steps = sorted(s[4] for s in trace if s[3] in attempts and s[0] == "research")
orphans = [s[4] for s in trace if s[3] and s[3] not in {t[2] for t in trace}]
print(f"{len(attempts)} attempts; steps {','.join(steps)}; orphans {len(orphans)}")
PY
}
summary=""
for ((i = 0; i < 30; i++)); do summary=$(trace_summary 2>/dev/null) && break; sleep 1; done
if [[ "$summary" =~ ^[2-9]\ attempts\;\ steps\ draft,final,plan\;\ orphans\ 0$ ]]; then
    pass "$name ($summary)"
else
    fail "$name" "the collector's spans of research-demo: ${summary:-none}"
fi

name="the operator was never refused by the API server, and its Events reached the FlowRuns"
log_before_upgrade=$(kubectl -n "$SYS_NS" logs "deploy/$DEPLOY" --tail=-1 2>&1 || true)
denials=$(grep -ci forbidden <<<"$log_before_upgrade" || true)
events=$(kubectl -n "$NS" get events --field-selector involvedObject.kind=FlowRun -o name 2>/dev/null | wc -l)
if [[ "$denials" == 0 && "$events" -gt 0 ]]; then
    pass "$name ($events Events)"
else
    fail "$name" "$denials refusals: $(refuses_of "$log_before_upgrade"); $events Events"
fi

# --- 6. upgrade: a changed CRD is applied; the operator rolls and the Lease moves ---------------
mkdir -p "$workdir/chart"
cp -r "$CHART" "$workdir/chart/cairn"
sed -i "0,/description: One execution of a flow, run by the Cairn operator/s//description: ($MARK) One execution of a flow, run by the Cairn operator/" \
    "$workdir/chart/cairn/files/crds.yaml"
crd_description() { kubectl get crd flowruns.cairn.dev -o jsonpath='{.spec.versions[0].schema.openAPIV3Schema.description}'; }
old_pod=$(kubectl -n "$SYS_NS" get pods -l "app.kubernetes.io/instance=$REL" -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
# The upgrade also moves migrations to a pre-upgrade Job (migrations.mode=job), which needs the
# owner's URL in a Secret of the user's own.
kubectl -n "$SYS_NS" create secret generic "$REL-db-owner" \
    --from-literal=database-url="$CHART_DATABASE_URL" >/dev/null
changed="$(helm package "$workdir/chart/cairn" --destination "$workdir/chart" |
    sed -n 's/^Successfully packaged chart and saved it to: //p' || true)"
name="helm upgrade applies a changed CRD"
t0="$EPOCHREALTIME"
if out=$(helm upgrade "$REL" "${changed:-$workdir/chart/cairn}" -n "$SYS_NS" --reuse-values \
    --set database.url= --set database.existingSecret="$REL-db-owner" --set migrations.mode=job \
    --set-string podAnnotations.e2e-rollout="$TS" --wait --timeout 180s 2>&1) &&
    [[ "$(crd_description)" == "($MARK)"* ]]; then
    pass "$name"
else
    fail "$name" "$out; description: $(crd_description)"
fi

name="the upgrade rolls the operator (a new pod first) and the new pod takes the Lease"
kubectl -n "$SYS_NS" rollout status "deploy/$DEPLOY" --timeout=120s >/dev/null 2>&1 || true
if [[ -n "$old_pod" ]]; then kubectl -n "$SYS_NS" wait "pod/$old_pod" --for=delete --timeout=60s >/dev/null 2>&1 || true; fi
new_pod=$(kubectl -n "$SYS_NS" get pods -l "app.kubernetes.io/instance=$REL" --field-selector=status.phase=Running \
    -o jsonpath='{.items[*].metadata.name}' 2>/dev/null || true)
if [[ -n "$new_pod" && "$new_pod" != *" "* && "$new_pod" != "$old_pod" ]] && wait_lease_held_by "$new_pod" 60; then
    handover=$(since "$t0")
    pass "$name (${handover}s from upgrade to the new leader)"
    timings+=("upgrade-handover=${handover}s")
else
    fail "$name" "old $old_pod, running now: '$new_pod', Lease held by '$(lease_holder)'"
fi

name="migrations.mode=job: the pre-upgrade Job ran \`cairn migrate\` to completion and the operator only verifies"
job_events=$(kubectl -n "$SYS_NS" get events --field-selector "involvedObject.kind=Job,involvedObject.name=$DEPLOY-migrate" \
    -o jsonpath='{range .items[*]}{.reason} {end}' 2>&1 || true)
mode=$(kubectl -n "$SYS_NS" get "deploy/$DEPLOY" \
    -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="CAIRN_MIGRATIONS")].value}' 2>&1 || true)
if [[ "$job_events" == *Completed* && "$mode" == verify ]]; then
    pass "$name"
else
    fail "$name" "Job events: '$job_events'; CAIRN_MIGRATIONS='$mode'"
fi

name="the new leader runs new FlowRuns"
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: cairn.dev/v1alpha1
kind: FlowRun
metadata: { name: after-upgrade }
spec: { flowRef: research, input: { topic: helm upgrades, breadth: 1 } }
EOF
if wait_jsonpath "$NS" fr/after-upgrade '{.status.waitingFor.event}' approve-after-upgrade 120s; then
    pass "$name"
else
    fail "$name" "status: $(kubectl -n "$NS" get fr after-upgrade -o jsonpath='{.status}' 2>&1)"
fi

name="the new operator pod was never refused by the API server either"
log_after_upgrade=$(kubectl -n "$SYS_NS" logs "deploy/$DEPLOY" --tail=-1 2>&1 || true)
if ! grep -qi forbidden <<<"$log_after_upgrade"; then
    pass "$name"
else
    fail "$name" "$(refuses_of "$log_after_upgrade")"
fi

name="helm upgrade back to the repository's chart restores the CRD"
if out=$(helm upgrade "$REL" "$package" -n "$SYS_NS" --reuse-values --wait --timeout 180s 2>&1) &&
    [[ "$(crd_description)" == "One execution of a flow"* ]]; then
    pass "$name"
else
    fail "$name" "$out; description: $(crd_description)"
fi

# --- 7. uninstall -------------------------------------------------------------------------------
# --- 7. a watched namespace deleted with a run waiting in it --------------------------------------
# The operator's rights there (its RoleBinding) go with the namespace, in no set order: nothing
# it must remove (a finalizer) may be left on the FlowRuns. Its rows go too, once it sees the
# namespace being deleted (it may `get` its watched namespaces by name).
name="deleting a watched namespace holding a waiting run and its child finishes within a minute, its rows forgotten"
rows_of_b() { psql "$CAIRN_CLUSTER_PG_URL" -XAt -c "SELECT count(*) FROM cairn.runs WHERE namespace = '$NS_B'" 2>&1; }
runs_before=$(rows_of_b)
finalizers=$(kubectl -n "$NS_B" get fr -o jsonpath='{range .items[*]}{.metadata.finalizers}{end}' 2>&1)
t0="$EPOCHREALTIME"
kubectl delete namespace "$NS_B" --wait=false >/dev/null
namespace_gone=""
for ((i = 0; i < 60; i++)); do
    kubectl get namespace "$NS_B" >/dev/null 2>&1 || { namespace_gone=$(since "$t0"); break; }
    sleep 1
done
for ((i = 0; i < 60; i++)); do [[ "$(rows_of_b)" == 0 ]] && break; sleep 1; done
if [[ -n "$namespace_gone" && "$runs_before" -ge 2 && "$(rows_of_b)" == 0 && -z "$finalizers" ]]; then
    pass "$name (namespace gone in ${namespace_gone}s, rows in $(since "$t0")s; $runs_before runs)"
else
    fail "$name" "namespace: $(kubectl get namespace "$NS_B" -o jsonpath='{.status}' 2>&1); runs before $runs_before, now $(rows_of_b); finalizers before: $finalizers"
fi

name="helm uninstall removes the release and keeps the CRDs"
delete_runs || true
if out=$(helm uninstall "$REL" -n "$SYS_NS" --wait --timeout 120s 2>&1); then
    installed=""
    left=""
    kubectl -n "$SYS_NS" get deploy "$DEPLOY" >/dev/null 2>&1 && left+="Deployment; "
    kubectl get clusterrole "$REL-operator" >/dev/null 2>&1 && left+="ClusterRole; "
    kubectl -n "$NS" get role "$REL-operator" >/dev/null 2>&1 && left+="Role in $NS; "
    [[ -z "$(kubectl get resourceprofiles -l "app.kubernetes.io/instance=$REL" -o name)" ]] || left+="ResourceProfiles; "
    for crd in flowruns flows flowevents resourceprofiles; do
        policy=$(kubectl get crd "$crd.cairn.dev" -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}' 2>&1 || true)
        [[ "$policy" == keep ]] || left+="CRD $crd: '$policy'; "
    done
    if [[ -z "$left" && "$out" == *"kept due to the resource policy"* ]]; then pass "$name"; else fail "$name" "$left $out"; fi
else
    fail "$name" "$out"
fi

timings+=("total=$(since "$started")s")
