#!/usr/bin/env bash
# The research-agent example on the real one-node cluster, installed the way a user would:
# brings the cluster up, builds the operator and the agent, imports their images, installs the
# Helm chart (the operator watches one demo namespace), runs the example FlowRun, shows it wait
# for approval with no pod running (`kubectl cairn inspect`: its steps, costs and question),
# approves it with `kubectl cairn approve` and shows it finish (`kubectl cairn inspect` again).
# `kubectl cairn` is the static cairn binary installed as the plugin kubectl-cairn on a temporary
# PATH, with the admin kube context.
#
#   tests/cluster/cluster-demo.sh          # (make cluster-demo) leaves the demo installed to explore
#   tests/cluster/cluster-demo.sh clean    # removes it (FlowRuns first, then the release, then namespaces)
#
# A new run replaces the previous demo. Every run uses a fresh namespace: events are durable per
# namespace, and the previous run's approval would otherwise answer the new run at once.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHART="$REPO_ROOT/charts/cairn"
EXAMPLE="$REPO_ROOT/examples/agent/k8s"
RELEASE=cairn-demo
SYS_NS=cairn-demo-system
LEASE=cairn-demo
OPERATOR_IMAGE=localhost/cairn-operator:dev
AGENT_IMAGE=localhost/cairn-agent:dev
NS="cairn-demo-$(date +%s)"
watch_pid=""
plugin_dir=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# kubectl cairn, in the demo namespace (runs' details come from the read API, api.cairn.dev).
kc() { run kubectl cairn "$@" -n "$NS"; }

cleanup() {
    [[ -n "$watch_pid" ]] && kill "$watch_pid" 2>/dev/null
    [[ -n "$plugin_dir" ]] && rm -rf "$plugin_dir"
    return 0
}
trap cleanup EXIT

kubeconfig="$("$CLUSTER_DIR/up.sh" | tail -n 1)"
# shellcheck disable=SC1091
source "$STATE_DIR/env"
[[ "$KUBECONFIG" == "$kubeconfig" ]] || die "up.sh printed $kubeconfig, env file says $KUBECONFIG"

# Removes the previous demo: its FlowRuns while its operator still runs (it forgets their
# database rows), then its namespaces and the release.
clean() {
    local old ns
    if ! helm status "$RELEASE" -n "$SYS_NS" >/dev/null 2>&1; then
        kubectl delete namespace "$SYS_NS" --ignore-not-found --wait=false >/dev/null
        return 0
    fi
    old=$(kubectl get namespaces -l cairn.dev/demo=flows -o jsonpath='{.items[*].metadata.name}')
    for ns in $old; do
        log "removing the previous demo namespace $ns"
        if ! kubectl -n "$ns" delete fr --all --timeout=60s >/dev/null 2>&1; then
            for fr in $(kubectl -n "$ns" get fr -o name 2>/dev/null); do
                kubectl -n "$ns" patch "$fr" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
            done
        fi
        kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null
    done
    if [[ "${1:-}" == all ]]; then
        log "uninstalling $RELEASE"
        helm uninstall "$RELEASE" -n "$SYS_NS" --wait --timeout 120s >/dev/null
        kubectl delete namespace "$SYS_NS" --ignore-not-found --wait=false >/dev/null
    fi
}

if [[ "${1:-}" == clean ]]; then
    clean all
    echo "removed the demo (the CRDs stay, as after any uninstall)"
    exit 0
fi

say "building the operator and the example agent (static), their images from the Dockerfiles (buildah), imported into the cluster"
build_static_bins
"$CLUSTER_DIR/image.sh" "$OPERATOR_IMAGE" "$(static_bin_dir)/cairn" | grep '^name=\|^manifest_digest='
"$CLUSTER_DIR/image.sh" "$AGENT_IMAGE" "$(static_bin_dir)/agent" | grep '^name=\|^manifest_digest='
# The kubectl plugin: the same binary, named kubectl-cairn, on PATH.
plugin_dir="$(mktemp -d)"
cp "$(static_bin_dir)/cairn" "$plugin_dir/kubectl-cairn"
export PATH="$plugin_dir:$PATH"

clean
say "installing the chart: release $RELEASE in $SYS_NS, watching $NS"
# A namespace still terminating (from `clean`) cannot take new objects.
if [[ "$(kubectl get namespace "$SYS_NS" -o jsonpath='{.status.phase}' 2>/dev/null)" == Terminating ]]; then
    kubectl wait --for=delete "namespace/$SYS_NS" --timeout=180s >/dev/null
fi
for ns in "$SYS_NS" "$NS"; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    kubectl label namespace "$ns" --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
done
kubectl label namespace "$NS" cairn.dev/demo=flows >/dev/null   # found and removed by the next run
# --take-ownership: the CRDs may have been applied by another test or kept from another release.
# The profiles get a prefix: ResourceProfiles are cluster-wide and the example brings its own `small`.
install=(helm upgrade --install "$RELEASE" "$CHART" -n "$SYS_NS" --take-ownership
    --set "watchNamespaces={$NS}" --set leaderElection.leaseName="$LEASE"
    --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}"
    --set image.pullPolicy=Never --set resourceProfiles.namePrefix=demo-
    --wait --timeout 180s)
# The cluster's Postgres over verify-full: its CA in a Secret, which the chart mounts.
chart_database_args "$SYS_NS"
# shellcheck disable=SC2016  # the variable name is printed, not its secret value
printf '$ %s --set database.url=$DATABASE_URL --set database.caSecret=cairn-database-ca\n' "${install[*]}"
"${install[@]}" "${CHART_DATABASE_ARGS[@]}" >/dev/null
run kubectl -n "$SYS_NS" get deploy,pods,svc
run kubectl get resourceprofiles

say "running the example: a Flow and a FlowRun (plan, three child summaries, draft, wait for approval)"
# The chart's profiles carry the demo- prefix; the example's Flow asks for `small`, which the
# example brings (a fresh cluster has no other).
run kubectl apply -f "$EXAMPLE/profile.yaml"
run kubectl -n "$NS" apply -f "$EXAMPLE/flow.yaml" -f "$EXAMPLE/flowrun.yaml"
echo "\$ kubectl -n $NS get flowruns -w"
kubectl -n "$NS" get flowruns -w &
watch_pid=$!
kubectl -n "$NS" wait fr/research-demo --for=jsonpath='{.status.waitingFor.event}'=approve-research-demo --timeout=180s >/dev/null
sleep 1
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true
watch_pid=""

say "it waits for a person, with no pod running"
run_id=$(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status.runId}')
kubectl -n "$NS" wait pods -l "cairn.dev/run=$run_id" --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null || true
run kubectl -n "$NS" get pods
kc runs
kc inspect research-demo

say "approving it with kubectl cairn (a FlowEvent, checked against the question's schema; Kubernetes RBAC decides who may)"
kc approve research-demo --wait --timeout 120s
echo "\$ kubectl -n $NS get flowruns -w"
kubectl -n "$NS" get flowruns -w &
watch_pid=$!
kubectl -n "$NS" wait fr/research-demo --for=jsonpath='{.status.phase}'=Succeeded --timeout=180s >/dev/null
sleep 1
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true
watch_pid=""

say "done"
last_pod=$(kubectl -n "$NS" get fr research-demo -o jsonpath='{.status.pod}')
run kubectl -n "$NS" get flowruns,flowevents
kc inspect research-demo

cat <<EOF

What this did:
  - brought up the one-node cluster (tests/cluster/up.sh), built the static cairn and agent,
    built $OPERATOR_IMAGE and $AGENT_IMAGE from Dockerfile and examples/agent/Dockerfile with buildah
    and imported them;
  - installed charts/cairn as release $RELEASE in namespace $SYS_NS: the CRDs, the operator
    (restricted pod, Lease $SYS_NS/$LEASE), RBAC limited to namespace $NS, ResourceProfiles demo-*,
    the database URL from \$CAIRN_CLUSTER_PG_URL in a Secret, over TLS (verify-full, the CA in
    Secret cairn-database-ca);
  - applied examples/agent/k8s/flow.yaml and flowrun.yaml in $NS: research-demo planned, ran three
    child FlowRuns, drafted, and waited for approve-research-demo with no pod running;
  - approved it with \`kubectl cairn approve\` (a FlowEvent for approve-research-demo addressed
    to this FlowRun; examples/agent/k8s/approve.yaml is one for the namespace): the run
    resumed in a new pod and Succeeded;
    \`kubectl cairn inspect\` showed it before and after (the steps and costs come from the
    operator's read API, the aggregated API api.cairn.dev that the chart registers).

Explore:
  source $STATE_DIR/env
  cp $(static_bin_dir)/cairn ~/.local/bin/kubectl-cairn   # any directory on PATH: the kubectl plugin
  kubectl cairn runs -n $NS
  kubectl cairn inspect research-demo -n $NS
  kubectl -n $NS get fr,fe,pods
  kubectl -n $NS logs $last_pod        # the last attempt's log
  kubectl -n $SYS_NS logs deploy/$RELEASE-operator  # the operator (JSON lines)
  kubectl get --raw /apis/api.cairn.dev/v1alpha1/namespaces/$NS/runs/research-demo
  kubectl get --raw /api/v1/namespaces/$SYS_NS/services/cairn-operator:http/proxy/metrics
Remove it: tests/cluster/cluster-demo.sh clean
EOF
