#!/usr/bin/env bash
# Cluster smoke test: brings the cluster up if needed (tests/cluster/up.sh), imports a locally
# built image (pg-smoke, from tests/cluster/tools), runs it as a pod that inserts a row into the
# cluster's Postgres (10.88.0.1:5432, reached by its Service name cairn-postgres.default, so DNS and
# kube-proxy are exercised too), then checks the pod phase is Succeeded and the row exists.
# Ends with "1 passed, 0 failed" (or "0 passed, 1 failed" and exit 1).
# The cluster is left running (tests/cluster/down.sh stops it) unless CAIRN_CLUSTER_DOWN_AFTER=1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TEST_NAME="cluster smoke: pod from a local image writes to host Postgres"
POD=pg-smoke
IMAGE=localhost/cairn-pg-smoke:dev

finish() {
    local rc=$?
    if [[ $rc -eq 0 ]]; then
        echo "PASS: $TEST_NAME"
        echo "1 passed, 0 failed"
    else
        echo "FAIL: $TEST_NAME (exit $rc; logs in $LOG_DIR)"
        echo "0 passed, 1 failed"
    fi
    if [[ "${CAIRN_CLUSTER_DOWN_AFTER:-0}" == 1 ]]; then "$CLUSTER_DIR/down.sh" >&2 || true; fi
    exit "$rc"
}
trap finish EXIT

diagnose() {
    echo "--- diagnostics ---" >&2
    kubectl get pods -A -o wide >&2 || true
    kubectl describe pod "$POD" >&2 || true
    kubectl logs "$POD" >&2 || true
    for c in kubelet containerd; do
        echo "--- last lines of $LOG_DIR/$c.log ---" >&2
        tail -n 20 "$LOG_DIR/$c.log" >&2 || true
    done
}

kubeconfig="$("$CLUSTER_DIR/up.sh" | tail -n 1)"
# shellcheck disable=SC1091
source "$STATE_DIR/env"
[[ "$KUBECONFIG" == "$kubeconfig" ]] || die "up.sh printed $kubeconfig, env file says $KUBECONFIG"

# up.sh has just built the tools crate (pg-smoke included); no second cargo run needed.
# The cluster's own plumbing (like its pause image), so not through the Dockerfiles of image.sh:
# pg-smoke is a dynamic binary, put in an image with the libraries ldd lists.
archive="$STATE_DIR/images/pg-smoke.tar"
mkdir -p "$STATE_DIR/images"
"$CAIRN_CLUSTER_TOOLS/cairn-oci-image" --name "$IMAGE" --binary "$CAIRN_CLUSTER_TOOLS/pg-smoke" --output "$archive" >&2
/usr/bin/ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >&2
rm -f "$archive"

token="smoke-$(date +%s)-$RANDOM"
kubectl delete pod "$POD" --ignore-not-found --wait=true >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $POD
spec:
  restartPolicy: Never
  containers:
    - name: pg-smoke
      image: $IMAGE
      imagePullPolicy: Never
      env:
        # Through the Service name: exercises CoreDNS, kube-proxy and the host Postgres at once.
        - name: PG_SMOKE_URL
          value: "$CAIRN_CLUSTER_PG_URL_DNS"
        - name: PG_SMOKE_TOKEN
          value: "$token"
      resources:
        limits: {memory: 64Mi}
EOF

# Wait for the pod to finish (bounded), failing early if it fails.
phase=""
for ((i = 0; i < 120; i++)); do
    phase="$(kubectl get pod "$POD" -o jsonpath='{.status.phase}')"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    sleep 1
done
if [[ "$phase" != Succeeded ]]; then
    diagnose
    die "pod $POD phase is '$phase' after 120s, expected Succeeded (see $LOG_DIR/kubelet.log)"
fi
echo "pod $POD: phase $phase, imageID $(kubectl get pod "$POD" -o jsonpath='{.status.containerStatuses[0].imageID}')" >&2
kubectl logs "$POD" >&2

rows="$(cd / && runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -h "$STATE_DIR/postgres/socket" -p "$PG_PORT" -U postgres -d cairn -tAc \
    "SELECT count(*) FROM public.cluster_smoke WHERE token = '$token'")"
[[ "$rows" == 1 ]] || die "expected 1 row with token $token in cluster_smoke, found '$rows'"
echo "row with token $token found in the cluster Postgres" >&2
kubectl delete pod "$POD" --wait=false >/dev/null
