#!/usr/bin/env bash
# The real-node rig: one Kubernetes node on this machine, for the real-node
# scenarios (e2e/tests/real_node.rs) and for a person to look around.
#
#   e2e/node/rig.sh up [--images DIR]   start everything (stops a stale rig first)
#   e2e/node/rig.sh down                stop everything, restore what the kubelet changed
#   e2e/node/rig.sh exec CMD...         run CMD inside the rig (netns, KUBECONFIG, BATON_NODE_*)
#   e2e/node/rig.sh kubectl ARGS...     kubectl against the rig's API server
#   e2e/node/rig.sh status              what runs, by pid
#   e2e/node/rig.sh restart NAME        restart kubelet, containerd, ... (same command line)
#   e2e/node/rig.sh import DIR          import image archives (*.tar) into containerd
#
# What runs (all binaries real): etcd, kube-apiserver (Node,RBAC),
# kube-controller-manager, kube-scheduler and kubelet built from their Go
# modules by e2e/cluster/k8s-bins.sh; containerd + runc + CNI plugins from
# Debian, containerd with its own config, root, state and socket under the
# rig's directory. Everything runs in a network namespace of the rig's own
# (`baton-node`): the node address 10.250.0.1 sits on its lo interface,
# pods get 10.251.0.0/24 on a bridge there, so nothing is routed to or from
# the host's network. From the host, the API server is reachable at
# https://127.0.0.1:$BATON_NODE_API_PORT (a socat relay into the namespace);
# `exec` runs a command inside the namespace, where tests and clients reach
# pod IPs and the node address.
#
# Env: BATON_NODE_DIR (default /var/tmp/baton-node), BATON_NODE_API_PORT
# (default 16443), BATON_K8S_BIN_DIR (default: e2e/cluster/k8s-bins.sh's
# cache), BATON_NODE_IMAGES (image archives to import, *.tar; --images).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DIR="${BATON_NODE_DIR:-/var/tmp/baton-node}"
NETNS=baton-node
NODE=baton-node
NODE_IP=10.250.0.1
POD_CIDR=10.251.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_PORT_HOST="${BATON_NODE_API_PORT:-16443}"
CGROUP_ROOT=baton-node
# Sysctls the kubelet rewrites (protectKernelDefaults: false) and that down restores.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

log() { echo "rig: $*" >&2; }
die() { echo "rig: $*" >&2; exit 1; }

bin_dir() {
  if [ -n "${BATON_K8S_BIN_DIR:-}" ]; then echo "$BATON_K8S_BIN_DIR"; return; fi
  echo "${BATON_CACHE:-$HOME/.cache/baton}/k8s/${BATON_K8S_VERSION:-v1.34.4}"
}

in_ns() { nsenter --net="/run/netns/$NETNS" "$@"; }

check_tools() {
  local missing=() b bins
  bins=$(bin_dir)
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    [ -x "$bins/$b" ] || missing+=("$bins/$b (run e2e/cluster/k8s-bins.sh)")
  done
  for b in containerd containerd-shim-runc-v2 runc ctr openssl socat nsenter ip; do
    command -v "$b" >/dev/null || missing+=("$b")
  done
  for b in bridge host-local loopback; do
    [ -x "/usr/lib/cni/$b" ] || missing+=("/usr/lib/cni/$b (apt-get install containernetworking-plugins)")
  done
  [ "$(id -u)" = 0 ] || missing+=("root")
  if [ ${#missing[@]} -gt 0 ]; then
    printf 'rig: missing: %s\n' "${missing[@]}" >&2
    echo "rig: Debian packages: apt-get install containerd runc containernetworking-plugins socat openssl iproute2" >&2
    exit 2
  fi
}

# start NAME [--ns] CMD...: run CMD detached (own session), log and pid under $DIR.
start() {
  local name=$1; shift
  local pre=()
  if [ "$1" = --ns ]; then pre=(nsenter --net="/run/netns/$NETNS"); shift; fi
  mkdir -p "$DIR/cmds"
  printf '%q ' "${pre[@]}" "$@" >"$DIR/cmds/$name"
  setsid "${pre[@]}" "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name"
}

# restart NAME: stop it and start it again with the same command line (the
# scenarios restart the kubelet and containerd in the middle of a handover).
cmd_restart() {
  local name=$1
  [ -f "$DIR/cmds/$name" ] || die "restart: no process $name"
  stop "$name"
  eval "setsid $(cat "$DIR/cmds/$name")" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name"
  log "restarted $name (pid $!)"
}

# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what not ready after ${secs}s (logs: $DIR/logs)"
}

pki() {
  local p="$DIR/pki"
  mkdir -p "$p"
  key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
  key "$p/ca.key"
  openssl req -x509 -new -key "$p/ca.key" -subj "/CN=baton-node-ca" -days 30 -out "$p/ca.crt" 2>/dev/null
  # cert NAME SUBJECT [SAN]: a leaf signed by the rig's CA.
  cert() {
    key "$p/$1.key"
    openssl req -new -key "$p/$1.key" -subj "$2" -out "$p/$1.csr" 2>/dev/null
    local ext="$p/$1.ext"
    echo "basicConstraints=CA:FALSE" >"$ext"
    [ -n "${3:-}" ] && echo "subjectAltName=$3" >>"$ext"
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -days 30 -extfile "$ext" -out "$p/$1.crt" 2>/dev/null
  }
  cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert kubelet "/CN=$NODE" "IP:$NODE_IP,DNS:$NODE"
  key "$p/sa.key"
  openssl ec -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  # Static tokens: one identity per component (RBAC's bootstrap roles bind
  # system:kube-controller-manager and system:kube-scheduler; the Node
  # authorizer takes system:node:<name> in system:nodes).
  local t
  for t in admin node kcm scheduler; do head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$p/$t.token"; done
  {
    echo "$(cat "$p/admin.token"),baton-admin,baton-admin,\"system:masters\""
    echo "$(cat "$p/node.token"),system:node:$NODE,system:node:$NODE,\"system:nodes\""
    echo "$(cat "$p/kcm.token"),system:kube-controller-manager,system:kube-controller-manager"
    echo "$(cat "$p/scheduler.token"),system:kube-scheduler,system:kube-scheduler"
  } >"$p/tokens.csv"
}

# kubeconfig FILE SERVER TOKEN_FILE
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rig
  cluster: {server: "$2", certificate-authority: "$DIR/pki/ca.crt"}
users:
- name: rig
  user: {token: "$(cat "$3")"}
contexts:
- name: rig
  context: {cluster: rig, user: rig}
current-context: rig
EOF
}

network() {
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  # The node address on the namespace's lo (no dummy driver on every kernel):
  # not a loopback address, so the kubelet publishes it.
  ip -n "$NETNS" addr add "$NODE_IP/32" dev lo
  mkdir -p "$DIR/cni/net.d"
  # isGateway: the bridge holds the pods' gateway inside the rig's namespace,
  # so pods reach the node address (API server) and the rig's clients reach
  # pod IPs; nothing leaves the namespace (no masquerade, no default route).
  cat >"$DIR/cni/net.d/10-baton-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "baton-node",
  "plugins": [
    {"type": "bridge", "bridge": "cni-baton", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
EOF
}

cgroups() {
  local c
  for c in /sys/fs/cgroup/*/; do
    c=${c%/}
    [ -d "$c" ] || continue
    mkdir -p "$c/$CGROUP_ROOT"
    if [ -f "$c/cpuset.cpus" ]; then
      cat "$c/cpuset.cpus" >"$c/$CGROUP_ROOT/cpuset.cpus"
      cat "$c/cpuset.mems" >"$c/$CGROUP_ROOT/cpuset.mems"
    fi
  done
  # The cgroup the agent attaches to in the scenarios; clients are placed in it.
  mkdir -p "$(cgroup2)/$CGROUP_ROOT/clients"
}

cgroup2() { awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo; }

containerd_up() {
  local c="$DIR/containerd"
  mkdir -p "$c/root" "$c/state"
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "ghcr.io/baton-dev/baton-empty:1"
  # This VM's bounding set lacks CAP_SYS_RESOURCE: raising oom_score_adj fails.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
EOF
  start containerd --ns containerd --config "$c/config.toml"
  wait_for containerd 20 ctr -a "$c/containerd.sock" version
}

import_images() {
  local dir=${1:-} f
  [ -n "$dir" ] || return 0
  for f in "$dir"/*.tar; do
    [ -e "$f" ] || continue
    ctr -a "$DIR/containerd/containerd.sock" -n k8s.io images import --no-unpack=false "$f" >/dev/null
    log "imported $(basename "$f")"
  done
}

control_plane() {
  local bins p="$DIR/pki"
  bins=$(bin_dir)
  start etcd --ns "$bins/etcd" --data-dir "$DIR/etcd" --name rig \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster rig=http://127.0.0.1:2380 --log-level warn --unsafe-no-fsync
  start kube-apiserver --ns "$bins/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --bind-address 0.0.0.0 --secure-port 6443 --advertise-address "$NODE_IP" \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" --token-auth-file "$p/tokens.csv" \
    --authorization-mode Node,RBAC --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$p/sa.pub" \
    --service-account-signing-key-file "$p/sa.key" \
    --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$p/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP --allow-privileged=true \
    --enable-admission-plugins NodeRestriction,ServiceAccount --profiling=false
  wait_for kube-apiserver 60 in_ns kubectl --kubeconfig "$DIR/admin.kubeconfig" get --raw /readyz
  start kube-controller-manager --ns "$bins/kube-controller-manager" \
    --kubeconfig "$DIR/kcm.kubeconfig" --authentication-kubeconfig "$DIR/kcm.kubeconfig" \
    --authorization-kubeconfig "$DIR/kcm.kubeconfig" --bind-address 127.0.0.1 --secure-port 10257 \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --use-service-account-credentials --leader-elect=false \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route' \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-name baton-node
  start kube-scheduler --ns "$bins/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$DIR/scheduler.kubeconfig" --bind-address 127.0.0.1 \
    --secure-port 10259 --leader-elect=false
}

kubelet_up() {
  local k="$DIR/kubelet" bins
  bins=$(bin_dir)
  mkdir -p "$k"
  cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $DIR/pki/kubelet.crt
tlsPrivateKeyFile: $DIR/pki/kubelet.key
address: $NODE_IP
healthzBindAddress: 127.0.0.1
serializeImagePulls: false
# The rig's disk is shared with the build: never evict or collect images for disk.
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
podPidsLimit: 4096
EOF
  start kubelet --ns "$bins/kubelet" --config "$DIR/kubelet.yaml" \
    --kubeconfig "$DIR/node.kubeconfig" --root-dir "$k" --cert-dir "$k/pki" \
    --hostname-override "$NODE" --node-ip "$NODE_IP" --v 2
  wait_for "node Ready" 90 in_ns kubectl --kubeconfig "$DIR/admin.kubeconfig" wait \
    --for=condition=Ready "node/$NODE" --timeout 1s
}

relay_up() {
  # Host-side access for people and kubectl: a listener on the host's
  # loopback whose connections are made from inside the namespace.
  start api-relay socat "TCP-LISTEN:$API_PORT_HOST,bind=127.0.0.1,reuseaddr,fork" \
    "EXEC:nsenter --net=/run/netns/$NETNS socat STDIO TCP4\\:$NODE_IP\\:6443"
  wait_for api-relay 10 kubectl --kubeconfig "$DIR/host.kubeconfig" get --raw /readyz
}

save_host_state() {
  local s
  for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$DIR/sysctl.saved"
  ls /var/run/netns 2>/dev/null | grep '^cni-' >"$DIR/netns.before" || true
  ls /var/log/pods 2>/dev/null >"$DIR/logpods.before" || true
  [ -d /run/containerd ] && touch "$DIR/run-containerd.existed"
  if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
    touch "$DIR/bpffs.mounted"
  fi
  echo "$(cgroup2)" >"$DIR/cgroup2"
}

cmd_up() {
  local images="${BATON_NODE_IMAGES:-}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --images) images=$2; shift 2 ;;
      *) die "up: unknown argument $1" ;;
    esac
  done
  check_tools
  if [ -e "$DIR/state" ] || ip netns list | grep -qw "$NETNS"; then
    log "a previous rig is in $DIR: stopping it first"
    cmd_down
  fi
  local t0=$SECONDS
  mkdir -p "$DIR/logs" "$DIR/pids"
  echo starting >"$DIR/state"
  save_host_state
  pki
  kubeconfig "$DIR/admin.kubeconfig" "https://$NODE_IP:6443" "$DIR/pki/admin.token"
  kubeconfig "$DIR/host.kubeconfig" "https://127.0.0.1:$API_PORT_HOST" "$DIR/pki/admin.token"
  kubeconfig "$DIR/node.kubeconfig" "https://$NODE_IP:6443" "$DIR/pki/node.token"
  kubeconfig "$DIR/kcm.kubeconfig" "https://$NODE_IP:6443" "$DIR/pki/kcm.token"
  kubeconfig "$DIR/scheduler.kubeconfig" "https://$NODE_IP:6443" "$DIR/pki/scheduler.token"
  network
  cgroups
  control_plane
  containerd_up
  import_images "$images"
  kubelet_up
  relay_up
  echo up >"$DIR/state"
  log "up in $((SECONDS - t0))s: node $NODE Ready"
  log "inside: e2e/node/rig.sh exec CMD   from the host: KUBECONFIG=$DIR/host.kubeconfig"
}

# stop NAME: TERM the process group, KILL after 5 s.
stop() {
  local f="$DIR/pids/$1" pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Every process in the rig's cgroups (pods' containers and their shims' children).
kill_cgroup_procs() {
  local f
  for f in $(find /sys/fs/cgroup/*/"$CGROUP_ROOT" -name cgroup.procs 2>/dev/null); do
    { xargs -r kill -KILL <"$f"; } 2>/dev/null || true
  done
}

cmd_down() {
  local t0=$SECONDS
  [ -d "$DIR" ] || { log "nothing in $DIR"; ip netns del "$NETNS" 2>/dev/null || true; return 0; }
  echo stopping >"$DIR/state" 2>/dev/null || true
  stop api-relay
  stop kubelet
  kill_cgroup_procs
  stop containerd
  # containerd's shims outlive it; they are ours when they name our socket.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $DIR/containerd/containerd.sock" 2>/dev/null || true
  kill_cgroup_procs
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  # Mounts under the rig's directory (rootfs, shm, volumes), deepest first.
  local m
  for m in $(awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # Pod network namespaces containerd made (not in the rig's directory).
  for m in $(ls /var/run/netns 2>/dev/null | grep '^cni-' || true); do
    grep -qx "$m" "$DIR/netns.before" 2>/dev/null && continue
    umount -l "/var/run/netns/$m" 2>/dev/null || true
    rm -f "/var/run/netns/$m"
  done
  ip netns del "$NETNS" 2>/dev/null || true
  # Cgroups, children first (rmdir fails while a process is left: retried once).
  local c
  for c in $(find /sys/fs/cgroup/*/"$CGROUP_ROOT" -depth -type d 2>/dev/null); do
    rmdir "$c" 2>/dev/null || { sleep 0.5; rmdir "$c" 2>/dev/null || log "cgroup $c left (busy)"; }
  done
  if [ -f "$DIR/sysctl.saved" ]; then
    while IFS= read -r line; do sysctl -q -w "$line" >/dev/null 2>&1 || true; done <"$DIR/sysctl.saved"
  fi
  # Host paths containerd and the kubelet use whatever their config says.
  rm -rf /var/lib/cni/networks/baton-node
  rm -f /var/lib/cni/results/baton-node-* 2>/dev/null || true
  for m in $(ls /var/log/pods 2>/dev/null || true); do
    grep -qx "$m" "$DIR/logpods.before" 2>/dev/null || rm -rf "/var/log/pods/$m"
  done
  find /var/log/containers -xtype l -delete 2>/dev/null || true
  [ -e "$DIR/run-containerd.existed" ] || rm -rf /run/containerd
  rm -rf /sys/fs/bpf/baton
  if [ -e "$DIR/bpffs.mounted" ]; then umount /sys/fs/bpf 2>/dev/null || true; fi
  if [ -n "${BATON_NODE_KEEP_LOGS:-}" ]; then
    rm -rf "$BATON_NODE_KEEP_LOGS" && cp -r "$DIR/logs" "$BATON_NODE_KEEP_LOGS"
  fi
  rm -rf "$DIR"
  log "down in $((SECONDS - t0))s"
}

cmd_exec() {
  [ "$(cat "$DIR/state" 2>/dev/null)" = up ] || die "the rig is not up (e2e/node/rig.sh up)"
  in_ns env KUBECONFIG="$DIR/admin.kubeconfig" BATON_NODE_DIR="$DIR" BATON_NODE_NAME="$NODE" \
    BATON_NODE_IP="$NODE_IP" BATON_NODE_CGROUP="$(cat "$DIR/cgroup2")/$CGROUP_ROOT/clients" \
    BATON_NODE_CONTAINERD="$DIR/containerd/containerd.sock" "$@"
}

cmd_status() {
  local f
  echo "dir $DIR: $(cat "$DIR/state" 2>/dev/null || echo absent)"
  for f in "$DIR"/pids/*; do
    [ -e "$f" ] || continue
    if kill -0 "$(cat "$f")" 2>/dev/null; then echo "  $(basename "$f") pid $(cat "$f")"; else echo "  $(basename "$f") DEAD"; fi
  done
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  exec) shift; cmd_exec "$@" ;;
  kubectl) shift; cmd_exec kubectl "$@" ;;
  status) cmd_status ;;
  import) shift; import_images "$1" ;;
  restart) shift; cmd_restart "$1" ;;
  *) sed -n '2,11p' "$0"; exit 2 ;;
esac
