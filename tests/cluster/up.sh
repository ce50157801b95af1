#!/usr/bin/env bash
# Brings up a one-node Kubernetes cluster on this machine for Cairn's tests (see README.md here).
# Idempotent: components already running (pid file + live process) are left alone.
# The last line printed is the path of the admin kubeconfig.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "run as root (the cluster needs mounts, iptables and network namespaces)"
T0=$SECONDS

PKI="$STATE_DIR/pki"
CONF="$STATE_DIR/config"
ADMIN_KUBECONFIG="$STATE_DIR/admin.kubeconfig"
PG_DATA="$STATE_DIR/postgres/data"
PG_SOCKET_DIR="$STATE_DIR/postgres/socket"
PG_URL_FILE="$STATE_DIR/postgres-url"
PG_BIN=/usr/lib/postgresql/15/bin
ETCD_URL=http://127.0.0.1:2379

# ---------------------------------------------------------------------------------------------
# 1. Debian packages
APT_PACKAGES=(containerd runc containernetworking-plugins etcd-server etcd-client iptables conntrack
    openssl gcc libc6-dev iproute2 procps util-linux postgresql-15 postgresql-client-15)
install_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    log "installing Debian packages: ${missing[*]}"
    # Keep package scripts from starting their own etcd/containerd/postgres services:
    # this script runs its own instances with its own configs and ports.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ $own_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    return 0
}
install_packages

# ---------------------------------------------------------------------------------------------
# 2. Binaries: Kubernetes, helm, CoreDNS (Go, cached by version) and our Rust tools.
built="$("$CLUSTER_DIR/build-binaries.sh")"   # K8S_BIN=..., HELM_BIN=..., COREDNS_BIN=...
eval "$built"
TOOLS_BIN="$("$CLUSTER_DIR/build-tools.sh")"
mkdir -p "$RUN_DIR" "$LOG_DIR" "$BIN_DIR" "$PKI" "$CONF"
# Stable paths for tests: $BIN_DIR/{kubectl,helm,ctr,cairn-oci-image}.
ln -sfn "$K8S_BIN/kubectl" "$BIN_DIR/kubectl"
ln -sfn "$HELM_BIN/helm" "$BIN_DIR/helm"
ln -sfn "$TOOLS_BIN/cairn-oci-image" "$BIN_DIR/cairn-oci-image"
cat >"$BIN_DIR/ctr" <<EOF
#!/bin/sh
# ctr talking to the cluster's own containerd.
exec /usr/bin/ctr --address $CONTAINERD_SOCK "\$@"
EOF
chmod +x "$BIN_DIR/ctr"
KUBECTL="$BIN_DIR/kubectl"

# write_file PATH < content: replaces PATH only if the content changed. kube-proxy exits when its
# config file is rewritten, so re-runs must leave unchanged files untouched.
FILE_CHANGED=0
write_file() {
    local tmp="$1.new"
    cat >"$tmp"
    FILE_CHANGED=0
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; FILE_CHANGED=1; fi
}

# restart_if_changed NAME: after write_file changed NAME's config, stop the running daemon (by pid)
# so that start() runs it again with the new config.
restart_if_changed() {
    [[ $FILE_CHANGED -eq 1 ]] && pid_alive "$1" || return 0
    local pid i
    pid="$(cat "$RUN_DIR/$1.pid")"
    log "configuration of $1 changed: restarting it"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    return 0
}

# start NAME COMMAND...: runs COMMAND in its own session, logs to $LOG_DIR/NAME.log, pid file in $RUN_DIR.
start() {
    local name="$1"; shift
    if pid_alive "$name"; then return 0; fi
    log "starting $name (log: $LOG_DIR/$name.log)"
    # setsid: the daemons must not die with the shell or the test harness that ran up.sh.
    setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}

# ---------------------------------------------------------------------------------------------
# 3. Host preparation (per boot; all idempotent).
sysctl -q -w net.ipv4.ip_forward=1 fs.inotify.max_user_instances=512 fs.inotify.max_user_watches=524288
[[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null || true
# Pod traffic crossing the bridge must go through iptables, or Service DNAT does not apply to it.
sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
# The root mount is private here; kubelet and containerd need mount propagation.
mount --make-rshared /
# Create the pod bridge up front so the API server, CoreDNS and Postgres can bind 10.88.0.1
# before the first pod exists (the CNI bridge plugin reuses it).
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
fi
# A bridge without an address of its own takes the lowest of its ports' addresses, so its MAC
# changed as pods came and went: every pod's ARP entry for 10.88.0.1 went stale at once, and
# each pod lost Postgres and the API server until it asked again (TCP retransmissions: a flow
# pod's checkpoint once took 107 s). An address set here is kept (locally administered).
[[ "$(cat "/sys/class/net/$BRIDGE/addr_assign_type")" == 3 ]] || ip link set "$BRIDGE" address "$BRIDGE_MAC"
ip addr replace "$NODE_IP/16" dev "$BRIDGE"
ip link set "$BRIDGE" up
# Service IPs must never leave through eth0, even before kube-proxy has its rules in place.
ip route replace "$SERVICE_CIDR" dev "$BRIDGE"

# Guard rail: pods may only reach the pod range (and, through kube-proxy's DNAT, Services). Any
# forwarded packet from a pod to another destination is rejected here and never leaves the machine.
iptables -N CAIRN-EGRESS 2>/dev/null || true
iptables -F CAIRN-EGRESS
iptables -A CAIRN-EGRESS -s "$POD_CIDR" -d "$POD_CIDR" -j RETURN
iptables -A CAIRN-EGRESS -s "$POD_CIDR" -j REJECT --reject-with icmp-net-prohibited
iptables -C FORWARD -j CAIRN-EGRESS 2>/dev/null || iptables -I FORWARD 1 -j CAIRN-EGRESS

# ---------------------------------------------------------------------------------------------
# 4. PKI (once per state dir): one CA, the API server's serving cert, client certs, SA key pair.
# ECDSA P-256 keys: generating ten RSA keys takes long on a busy 2-core machine.
genkey() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
cert() { # cert NAME SUBJECT KIND(server|client) [SANS] [CA, default ca]
    local name="$1" subj="$2" kind="$3" sans="${4:-}" ca="${5:-ca}"
    [[ -f "$PKI/$name.crt" ]] && return
    genkey "$PKI/$name.key"
    openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=${kind}Auth"
        [[ -n "$sans" ]] && echo "subjectAltName=$sans"
    } >"$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
        -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
# The front proxy (aggregated APIs) has a CA of its own, as kubeadm sets it up: a client cert of
# the cluster CA must never pass as the API server forwarding a user.
for ca in ca front-proxy-ca; do
    if [[ ! -f "$PKI/$ca.crt" ]]; then
        log "creating $ca in $PKI"
        genkey "$PKI/$ca.key"
        openssl req -x509 -new -key "$PKI/$ca.key" -out "$PKI/$ca.crt" \
            -days 3650 -subj "/CN=cairn-$ca" 2>/dev/null
    fi
done
cert apiserver "/CN=kube-apiserver" server \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_API_IP"
# The API server's client cert for kubelet (logs, exec): system:masters passes kubelet's webhook authz.
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client
cert admin "/O=system:masters/CN=cairn-admin" client
# The API server's identity towards aggregated API servers (the operator's read API).
cert front-proxy-client "/CN=front-proxy-client" client "" front-proxy-ca
cert controller-manager "/CN=system:kube-controller-manager" client
cert scheduler "/CN=system:kube-scheduler" client
cert kube-proxy "/CN=system:kube-proxy" client
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" client
cert kubelet-serving "/CN=$NODE_NAME" server "DNS:$NODE_NAME,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"
# Postgres's serving cert: clients use verify-full, by address (host) or by Service name (pods).
cert postgres "/CN=cairn-postgres" server \
    "DNS:cairn-postgres.default.svc.cluster.local,DNS:cairn-postgres.default.svc,IP:$NODE_IP"
if [[ ! -f "$PKI/sa.key" ]]; then
    genkey "$PKI/sa.key"
    openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
chmod 600 "$PKI"/*.key

kubeconfig() { # kubeconfig FILE CERT_NAME USER
    local file="$1" name="$2" user="$3"
    [[ -f "$file" ]] && return
    KUBECONFIG="$file" "$KUBECTL" config set-cluster cairn --server=https://127.0.0.1:6443 \
        --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
    KUBECONFIG="$file" "$KUBECTL" config set-credentials "$user" --client-certificate="$PKI/$name.crt" \
        --client-key="$PKI/$name.key" --embed-certs=true >/dev/null
    KUBECONFIG="$file" "$KUBECTL" config set-context cairn --cluster=cairn --user="$user" >/dev/null
    KUBECONFIG="$file" "$KUBECTL" config use-context cairn >/dev/null
    chmod 600 "$file"
}
kubeconfig "$ADMIN_KUBECONFIG" admin cairn-admin
kubeconfig "$CONF/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
kubeconfig "$CONF/scheduler.kubeconfig" scheduler system:kube-scheduler
kubeconfig "$CONF/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
kubeconfig "$CONF/kubelet.kubeconfig" kubelet "system:node:$NODE_NAME"
export KUBECONFIG="$ADMIN_KUBECONFIG"

# ---------------------------------------------------------------------------------------------
# 5. Postgres for pods, on the bridge gateway (10.88.0.1:5432) only, as the postgres user.
# Postgres refuses to run as root. cd /: the postgres user cannot enter root's working directory.
as_postgres() { (cd / && runuser -u postgres -- "$@"); }
start_postgres() {
    # pg_ctl opens its log file as the postgres user.
    touch "$LOG_DIR/postgres.log"; chown postgres:postgres "$LOG_DIR/postgres.log"
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        log "initialising the cluster Postgres in $PG_DATA"
        mkdir -p "$PG_DATA" "$PG_SOCKET_DIR"
        chown -R postgres:postgres "$STATE_DIR/postgres"
        chmod 700 "$PG_DATA"
        local pw
        pw="$(openssl rand -hex 16)"
        echo "$pw" >"$STATE_DIR/postgres/password"
        as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 >"$LOG_DIR/postgres-initdb.log" 2>&1
        cat >>"$PG_DATA/postgresql.conf" <<EOF
# cairn test cluster: reachable from pods at the bridge gateway; no TCP on loopback, so it
# cannot clash with other Postgres instances on this machine (those use 127.0.0.1 or sockets).
listen_addresses = '$NODE_IP'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 200
fsync = off
EOF
        cat >"$PG_DATA/pg_hba.conf" <<EOF
local all all trust
host  all all 10.88.0.0/16 scram-sha-256
EOF
        as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$LOG_DIR/postgres.log" -w -t 60 start >/dev/null
        as_postgres "$PG_BIN/psql" -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -q \
            -c "CREATE ROLE cairn LOGIN SUPERUSER PASSWORD '$pw'" -c "CREATE DATABASE cairn OWNER cairn"
    elif ! as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        log "starting the cluster Postgres (log: $LOG_DIR/postgres.log)"
        as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$LOG_DIR/postgres.log" -w -t 60 start >/dev/null \
            || die "Postgres did not start (see $LOG_DIR/postgres.log)"
    fi
    head -1 "$PG_DATA/postmaster.pid" >"$RUN_DIR/postgres.pid"
}
start_postgres
# TLS on, with the serving cert above (Postgres reads key files it owns, mode 0600 only).
# Plaintext stays allowed (pg_hba "host"): the upgrade test's earlier release has no TLS.
install -o postgres -g postgres -m 600 "$PKI/postgres.key" "$PG_DATA/server.key"
install -o postgres -g postgres -m 644 "$PKI/postgres.crt" "$PG_DATA/server.crt"
# A statement waiting over a second for a lock is logged with who holds it (see explain in
# e2e-lib.sh). Set on every start: clusters made before these lines have them off.
as_postgres "$PG_BIN/psql" -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -q -v ON_ERROR_STOP=1 \
    -c "ALTER SYSTEM SET log_lock_waits = on" -c "ALTER SYSTEM SET ssl = on" \
    -c "SELECT pg_reload_conf()" >/dev/null
# Its URLs. Tests connect over verify-full with the cluster's CA; the plaintext one is for what
# predates TLS support (the upgrade test's earlier release) and the network smoke test.
PG_PLAIN_URL="postgres://cairn:$(cat "$STATE_DIR/postgres/password")@$NODE_IP:$PG_PORT/cairn"
echo "$PG_PLAIN_URL?sslmode=verify-full&sslrootcert=$PKI/ca.crt" >"$PG_URL_FILE"

# ---------------------------------------------------------------------------------------------
# 5b. An S3-compatible object store for artifacts: s3s-fs (a real S3 server from crates.io,
# built once per machine by tests/install-deps.sh) on the bridge gateway, so that both the
# operator on the host and flow pods reach it; each bucket is a directory under $S3_DATA.
S3_PORT=9000
S3_DATA="$STATE_DIR/s3/data"
S3_BUCKET=cairn-artifacts
S3_BIN="$("$REPO_ROOT/tests/install-deps.sh" s3)"
mkdir -p "$S3_DATA/$S3_BUCKET"; chmod 700 "$STATE_DIR/s3"
[[ -s "$STATE_DIR/s3/secret-key" ]] || {
    openssl rand -hex 10 >"$STATE_DIR/s3/access-key"
    openssl rand -hex 20 >"$STATE_DIR/s3/secret-key"
}
start s3 "$S3_BIN" --host "$NODE_IP" --port "$S3_PORT" \
    --access-key "$(cat "$STATE_DIR/s3/access-key")" --secret-key "$(cat "$STATE_DIR/s3/secret-key")" \
    "$S3_DATA"
wait_for "the S3 server" 30 "$LOG_DIR/s3.log" bash -c "exec 3<>/dev/tcp/$NODE_IP/$S3_PORT"

# ---------------------------------------------------------------------------------------------
# 5c. A trace collector: the OpenTelemetry Collector (built once per machine by
# tests/install-deps.sh), receiving OTLP over HTTP on the bridge gateway from operators on the
# host and from flow pods, and writing every span to $OTEL_SPANS as OTLP JSON lines.
OTLP_PORT=4318
OTEL_DIR="$STATE_DIR/otelcol"
OTEL_SPANS="$OTEL_DIR/spans.jsonl"
OTELCOL_BIN="$("$REPO_ROOT/tests/install-deps.sh" otelcol)"
mkdir -p "$OTEL_DIR"
cat >"$OTEL_DIR/config.yaml" <<EOF
receivers:
  otlp:
    protocols:
      http:
        endpoint: $NODE_IP:$OTLP_PORT
exporters:
  file:
    path: $OTEL_SPANS
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
EOF
start otelcol "$OTELCOL_BIN" --config="$OTEL_DIR/config.yaml"
wait_for "the trace collector" 60 "$LOG_DIR/otelcol.log" bash -c "exec 3<>/dev/tcp/$NODE_IP/$OTLP_PORT"

# ---------------------------------------------------------------------------------------------
# 6. etcd (Debian's), on loopback only.
mkdir -p "$STATE_DIR/etcd"; chmod 700 "$STATE_DIR/etcd"
start etcd /usr/bin/etcd --name cairn --data-dir "$STATE_DIR/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster cairn=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
wait_for "etcd" 60 "$LOG_DIR/etcd.log" env ETCDCTL_API=3 etcdctl --endpoints="$ETCD_URL" endpoint health

# ---------------------------------------------------------------------------------------------
# 7. Control plane.
# --advertise-address must not be loopback: it is the endpoint of the kubernetes Service that pods use.
start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="$ETCD_URL" \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$NODE_IP" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false --event-ttl=1h \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" --enable-aggregator-routing=true
wait_for "kube-apiserver /readyz" 120 "$LOG_DIR/kube-apiserver.log" "$KUBECTL" get --raw /readyz

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CONF/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CONF/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=true --allocate-node-cidrs=false \
    --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false
start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$CONF/scheduler.kubeconfig" \
    --authentication-kubeconfig="$CONF/scheduler.kubeconfig" \
    --authorization-kubeconfig="$CONF/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false

# ---------------------------------------------------------------------------------------------
# 8. containerd + runc + CNI bridge. Own socket, root and state dirs, so it never meets another
# containerd on this machine.
mkdir -p "$STATE_DIR/cni/net.d" "$(dirname "$CONTAINERD_SOCK")"
write_file "$STATE_DIR/cni/net.d/10-cairn.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "cairn",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE_DIR/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
write_file "$CONF/containerd.toml" <<EOF
version = 2
root = "$STATE_DIR/containerd"
state = "$(dirname "$CONTAINERD_SOCK")/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # The VM lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF" (oom_score_adj -998 is refused).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE_DIR/cni/net.d"
EOF
restart_if_changed containerd
start containerd /usr/bin/containerd --config "$CONF/containerd.toml"
wait_for "containerd" 60 "$LOG_DIR/containerd.log" /usr/bin/ctr --address "$CONTAINERD_SOCK" version
# containerd answers ctr before its CRI plugin has initialised (recovering its containers takes
# seconds), and a kubelet started meanwhile exits: "server is not initialized yet". The plugin
# logs "Start streaming server" just before it serves; look for it after its last start.
cri_ready() {
    grep -E 'loading plugin .{0,2}io\.containerd\.grpc\.v1\.cri|Start streaming server' "$LOG_DIR/containerd.log" |
        tail -n 1 | grep -q 'Start streaming server'
}
wait_for "containerd's CRI plugin" 120 "$LOG_DIR/containerd.log" cri_ready

# The sandbox ("pause") image, built locally: there is no registry to pull it from.
if ! "$BIN_DIR/ctr" -n k8s.io images ls -q | grep -qx 'registry.k8s.io/pause:3.10'; then
    PAUSE_CACHE="$CLUSTER_CACHE/pause"
    mkdir -p "$PAUSE_CACHE"
    if [[ ! -x "$PAUSE_CACHE/pause" || "$CLUSTER_DIR/pause.c" -nt "$PAUSE_CACHE/pause" ]]; then
        gcc -Os -static -o "$PAUSE_CACHE/pause" "$CLUSTER_DIR/pause.c"
    fi
    "$TOOLS_BIN/cairn-oci-image" --name registry.k8s.io/pause:3.10 --binary "$PAUSE_CACHE/pause" \
        --dest /pause --no-libs --output "$PAUSE_CACHE/pause.tar" >/dev/null
    "$BIN_DIR/ctr" -n k8s.io images import "$PAUSE_CACHE/pause.tar" >/dev/null
fi

# ---------------------------------------------------------------------------------------------
# 9. kubelet.
write_file "$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host: kubelet >= 1.35 would refuse it; 1.33 warns unless this is false.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
# No CAP_SYS_RESOURCE on this VM: kubelet must not lower its own oom_score_adj.
oomScoreAdj: 0
readOnlyPort: 0
address: $NODE_IP
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: true
# Locally imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The disk is shared with builds: evict only when it is really full.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
maxPods: 110
EOF
restart_if_changed kubelet
mkdir -p "$STATE_DIR/kubelet"
start kubelet "$K8S_BIN/kubelet" \
    --config="$CONF/kubelet.yaml" --kubeconfig="$CONF/kubelet.kubeconfig" \
    --root-dir="$STATE_DIR/kubelet" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"

# ---------------------------------------------------------------------------------------------
# 10. kube-proxy (iptables mode) for ClusterIP Services, including kubernetes.default.
write_file "$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
clientConnection:
  kubeconfig: $CONF/kube-proxy.kubeconfig
# 0 = leave the conntrack sysctls alone (read-only on this VM).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
nodePortAddresses: ["$NODE_IP/32"]
EOF
restart_if_changed kube-proxy
start kube-proxy "$K8S_BIN/kube-proxy" --config="$CONF/kube-proxy.yaml"

# ---------------------------------------------------------------------------------------------
# 11. CoreDNS as a host process on 10.88.0.1:53, serving cluster.local from the API.
# No `forward`: names outside the cluster are not resolved, so no DNS query ever leaves the machine.
write_file "$CONF/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $CLUSTER_DNS_IP
    errors
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $ADMIN_KUBECONFIG cairn
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
.:53 {
    bind $CLUSTER_DNS_IP
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
restart_if_changed coredns
start coredns "$COREDNS_BIN/coredns" -conf "$CONF/Corefile"

# ---------------------------------------------------------------------------------------------
# 12. Wait until a pod can be scheduled and run.
node_ready() {
    [[ "$("$KUBECTL" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
wait_for "node $NODE_NAME Ready" 180 "$LOG_DIR/kubelet.log" node_ready
# Pods are rejected until kube-controller-manager has created the default ServiceAccount.
wait_for "serviceaccount default" 120 "$LOG_DIR/kube-controller-manager.log" \
    "$KUBECTL" -n default get serviceaccount default
wait_for "CoreDNS ready" 60 "$LOG_DIR/coredns.log" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8181'

# Every daemon must still be running (a crash right after start would otherwise go unnoticed).
for c in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns; do
    pid_alive "$c" || die "$c is not running (see $LOG_DIR/$c.log)"
done

# A DNS name for the cluster Postgres: Service default/cairn-postgres (ClusterIP, no selector) whose
# EndpointSlice points at 10.88.0.1:5432. Pods can use cairn-postgres.default.svc.cluster.local:5432.
"$KUBECTL" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: cairn-postgres
  namespace: default
spec:
  ports: [{name: postgres, port: $PG_PORT, targetPort: $PG_PORT, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: cairn-postgres-host
  namespace: default
  labels: {kubernetes.io/service-name: cairn-postgres}
addressType: IPv4
ports: [{name: postgres, port: $PG_PORT, protocol: TCP}]
endpoints: [{addresses: ["$NODE_IP"]}]
EOF
echo "${PG_PLAIN_URL/@$NODE_IP:/@cairn-postgres.default.svc.cluster.local:}?sslmode=disable" >"$PG_URL_FILE-dns"

# An env file tests can source: PATH (kubectl, helm, ctr), KUBECONFIG, the Postgres URL.
write_file "$STATE_DIR/env" <<EOF
export PATH="$BIN_DIR:\$PATH"
export KUBECONFIG="$ADMIN_KUBECONFIG"
export CAIRN_CLUSTER_PG_URL="$(cat "$PG_URL_FILE")"
export CAIRN_CLUSTER_PG_URL_DNS="$(cat "$PG_URL_FILE-dns")"
export CAIRN_CLUSTER_PG_URL_PLAIN="$PG_PLAIN_URL?sslmode=disable"
export CAIRN_CLUSTER_PG_CA="$PKI/ca.crt"
export CAIRN_CLUSTER_TOOLS="$TOOLS_BIN"
export CAIRN_CLUSTER_BIN="$BIN_DIR"
export CONTAINERD_ADDRESS="$CONTAINERD_SOCK"
export CAIRN_CLUSTER_S3_ENDPOINT="http://$NODE_IP:$S3_PORT"
export CAIRN_CLUSTER_S3_BUCKET="$S3_BUCKET"
export CAIRN_CLUSTER_S3_DATA="$S3_DATA"
export CAIRN_CLUSTER_S3_ACCESS_KEY="$(cat "$STATE_DIR/s3/access-key")"
export CAIRN_CLUSTER_S3_SECRET_KEY="$(cat "$STATE_DIR/s3/secret-key")"
export CAIRN_CLUSTER_OTLP_ENDPOINT="http://$NODE_IP:$OTLP_PORT"
export CAIRN_CLUSTER_SPANS="$OTEL_SPANS"
EOF
log "cluster up in $((SECONDS - T0))s: kubectl/helm/ctr in $BIN_DIR, env file $STATE_DIR/env, Postgres URL in $PG_URL_FILE"
echo "$ADMIN_KUBECONFIG"
