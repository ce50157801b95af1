#!/usr/bin/env bash
# Stops everything up.sh started (by pid file), removes pods' leftovers (mounts, network
# namespaces, iptables chains, the bridge) and deletes the state dir, so up.sh starts afresh.
# The build cache (~/.cache/cairn) is kept. Safe to run when nothing is up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "run as root"

# stop NAME: SIGTERM the pid in its pid file, wait up to 20 s, then SIGKILL.
stop() {
    local name="$1" pidfile="$RUN_DIR/$1.pid" pid i
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop in 20s, killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# Reverse start-up order. kubelet first, so it stops restarting pods.
stop coredns
stop kube-proxy
stop kubelet

# Pods' containers and sandboxes: kill their tasks through our containerd while it still runs.
CTR=(/usr/bin/ctr --address "$CONTAINERD_SOCK" -n k8s.io)
if pid_alive containerd; then
    for task in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
        "${CTR[@]}" tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
    sleep 1
    for task in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
        "${CTR[@]}" tasks delete -f "$task" >/dev/null 2>&1 || true
    done
fi
stop containerd
# containerd-shim processes outlive containerd by design; ours carry our socket path on their
# command line. Kill exactly those, by pid.
for proc in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null | grep -q -- "-address $CONTAINERD_SOCK"; then
        kill -KILL "${proc#/proc/}" 2>/dev/null || true
    fi
done

# Any pod process still alive (e.g. containerd had crashed, so its tasks could not be killed)
# sits in kubelet's kubepods cgroups: kill those pids, then remove the empty cgroups.
find /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/unified/kubepods -name cgroup.procs 2>/dev/null \
    | while read -r procs; do
        while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$procs"
    done || true
sleep 0.5
find /sys/fs/cgroup/*/kubepods -depth -type d 2>/dev/null | while read -r dir; do
    rmdir "$dir" 2>/dev/null || true
done || true

stop kube-scheduler
stop kube-controller-manager
stop kube-apiserver
stop etcd
stop s3
stop otelcol

# Postgres runs as the postgres user; pg_ctl stops it by its own pid file.
if [[ -f "$STATE_DIR/postgres/data/postmaster.pid" ]]; then
    log "stopping the cluster Postgres"
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$STATE_DIR/postgres/data" -m fast -w stop \
        >/dev/null 2>&1 || stop postgres
fi
rm -f "$RUN_DIR/postgres.pid"

# Mounts left by pods and containerd (overlay rootfs, shm, secrets, netns), deepest first.
unmount_under() {
    local prefix="$1" m
    # /proc/self/mounts escapes spaces as \040; our paths have none.
    while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done < <(awk -v p="$prefix" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r)
}
unmount_under "$STATE_DIR/"
unmount_under "$(dirname "$CONTAINERD_SOCK")/"
# Network namespaces the CNI plugins set up for our pods (containerd names them cni-<uuid>).
for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    ip netns delete "$ns" 2>/dev/null || true
done

# iptables: chains kube-proxy and kubelet (KUBE-*), the CNI bridge/portmap plugins (CNI-*) and
# up.sh's pod egress guard (CAIRN-EGRESS) created.
clean_iptables() {
    local ipt="$1" table chain rule
    command -v "$ipt" >/dev/null || return 0
    for table in filter nat mangle; do
        # First the rules in any chain that jump to our chains, then our chains themselves.
        local rules
        rules="$("$ipt" -t "$table" -S 2>/dev/null | grep -E -- '^-A .*-j (KUBE|CNI|CAIRN)-' || true)"
        while read -r rule; do
            if [[ -n "$rule" ]]; then eval "$ipt -t $table ${rule/-A /-D }" 2>/dev/null || true; fi
        done <<<"$rules"
        for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI|CAIRN)-/ {print $2}'); do
            "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
        done
        for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI|CAIRN)-/ {print $2}'); do
            "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
}
clean_iptables iptables
clean_iptables ip6tables

# The bridge and the service route added by up.sh (veths went with the pods' namespaces).
ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
ip link delete "$BRIDGE" 2>/dev/null || true

# libcni caches each attachment under /var/lib/cni/results/<network>-<container>-<if>; ours is "cairn".
rm -f /var/lib/cni/results/cairn-*
rm -rf "$STATE_DIR" "$(dirname "$CONTAINERD_SOCK")"
log "cluster down; state $STATE_DIR removed (build cache $CLUSTER_CACHE kept)"
