#!/usr/bin/env bash
# Baton on a kind cluster, end to end: build the images, create the cluster,
# install charts/baton, wait for the fresh install, then roll the agent to a
# second tag while a client pod keeps connecting to a Service, and check that
# every node ended on the new agent and no connection failed.
# See e2e/kind/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: e2e/kind/run.sh [--keep] [--skip-build]

  --keep        leave the kind cluster running at the end (also on failure)
  --skip-build  use the images already in the local docker (same tags)

environment:
  BATON_KIND_CLUSTER      cluster name (default baton); must not exist yet
  BATON_KIND_NODE_IMAGE   kindest/node image (default: kind's own)
  BATON_KIND_V1, _V2      agent tags of the install and of the upgrade (kind-v1, kind-v2;
                          other tags only with --skip-build)
  BATON_KIND_AGENT_ARGS   extra agent flags, comma-separated (KmeshUpgrade spec.pod.extraArgs)
  BATON_KIND_TIMEOUT      per-step timeout (default 300s)
EOF
}

keep=${BATON_KIND_KEEP:-0}
skip_build=0
for arg in "$@"; do
  case $arg in
    --keep) keep=1 ;;
    --skip-build) skip_build=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "e2e/kind/run.sh: unknown argument $arg" >&2; usage >&2; exit 2 ;;
  esac
done

# Tools first, before anything changes on this machine (bash builtins only).
require_tools() {
  local missing=() tool
  for tool in docker kind helm kubectl curl cargo gcc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    {
      echo "e2e/kind/run.sh: missing on PATH: ${missing[*]} (it needs docker, kind, helm, kubectl, curl, cargo and gcc)"
      for tool in "${missing[@]}"; do
        case $tool in
          docker) echo "  docker:  https://docs.docker.com/engine/install/ (with a daemon this user may use)" ;;
          kind) echo "  kind:    go install sigs.k8s.io/kind@latest, or https://kind.sigs.k8s.io/docs/user/quick-start/#installation" ;;
          helm) echo "  helm:    https://helm.sh/docs/intro/install/" ;;
          kubectl) echo "  kubectl: https://kubernetes.io/docs/tasks/tools/" ;;
          curl) echo "  curl:    apt-get install curl" ;;
          cargo) echo "  cargo:   https://rustup.rs (the images hold host-built binaries, e2e/images/build.sh)" ;;
          gcc) echo "  gcc:     apt-get install gcc (the empty image's static pause program)" ;;
        esac
      done
    } >&2
    exit 2
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "e2e/kind/run.sh: docker is installed but its daemon is not reachable ('docker info' failed): start it, or give this user access to it" >&2
    exit 2
  fi
}
require_tools

here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
repo=$(cd "$here/../.." && pwd)
kit=$repo/e2e/kind

cluster=${BATON_KIND_CLUSTER:-baton}
context=kind-$cluster
ns=baton-system
timeout=${BATON_KIND_TIMEOUT:-300s}
registry=ghcr.io/baton-dev
operator_image=$registry/baton-operator:kind
agent_repo=$registry/baton-agent
v1=${BATON_KIND_V1:-kind-v1}
v2=${BATON_KIND_V2:-kind-v2}
empty_image=$registry/baton-empty:1
agent_args=${BATON_KIND_AGENT_ARGS:-}

log() { printf '\n>> %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
kc() { kubectl --context "$context" "$@"; }
hm() { helm --kube-context "$context" "$@"; }

created=0
watch_pid=
diagnose() {
  echo "---- diagnostics ----" >&2
  kc -n "$ns" get kmu baton -o yaml >&2 || true
  kc -n "$ns" get pods -o wide >&2 || true
  kc -n "$ns" get events --sort-by=.lastTimestamp >&2 || true
  kc -n "$ns" logs deploy/baton-operator --tail=100 >&2 || true
  local pod slot
  for pod in $(kc -n "$ns" get pods -l app.kubernetes.io/name=baton-agent -o name 2>/dev/null); do
    for slot in slot-a slot-b; do
      echo "-- $pod $slot" >&2
      kc -n "$ns" logs "$pod" -c "$slot" --tail=50 >&2 || true
      kc -n "$ns" logs "$pod" -c "$slot" --previous --tail=50 >&2 2>/dev/null || true
    done
  done
  kc -n baton-demo logs client --tail=20 >&2 || true
}
on_exit() {
  local rc=$?
  [[ -n $watch_pid ]] && kill "$watch_pid" 2>/dev/null
  if ((rc != 0 && created)); then diagnose; fi
  if ((created)); then
    if ((keep)); then
      echo "kept cluster $cluster: kubectl --context $context ...; delete with: kind delete cluster --name $cluster"
    else
      kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    fi
  fi
  exit "$rc"
}
trap on_exit EXIT

if kind get clusters 2>/dev/null | grep -x "$cluster" >/dev/null; then
  fail "kind cluster $cluster already exists: delete it (kind delete cluster --name $cluster) or set BATON_KIND_CLUSTER"
fi

if ((!skip_build)); then
  # The same image definitions the real-node rig builds with buildah
  # (e2e/images/): host-built binaries, FROM scratch. The `-v2` agent is the
  # layout-2 build, so the upgrade migrates maps.
  log "e2e/images/build.sh --tool docker --tag kind"
  "$repo/e2e/images/build.sh" --tool docker --tag kind
fi

log "kind create cluster $cluster"
created=1
kind create cluster --name "$cluster" --config "$kit/kind-config.yaml" --wait 120s \
  ${BATON_KIND_NODE_IMAGE:+--image "$BATON_KIND_NODE_IMAGE"}
kind load docker-image --name "$cluster" "$operator_image" "$agent_repo:$v1" "$agent_repo:$v2" "$empty_image"
# The agent pins maps under the node's /sys/fs/bpf (a hostPath): make it a bpffs.
for node in $(kind get nodes --name "$cluster"); do
  docker exec "$node" sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf'
done

log "helm install (agent $v1)"
extra=()
[[ -n $agent_args ]] && extra+=(--set "upgrade.pod.extraArgs={$agent_args}")
hm install baton "$repo/charts/baton" -n "$ns" --create-namespace \
  --set operator.image.tag=kind --set "agent.image.tag=$v1" \
  --set upgrade.strategy.handoverTimeoutSeconds=60 "${extra[@]}" \
  --wait --timeout "$timeout"

wait_rollout() {
  local image=$1
  kc -n "$ns" wait kmu/baton --for=jsonpath='{.status.stableImage}'="$image" --timeout="$timeout"
  kc -n "$ns" wait kmu/baton --for=jsonpath='{.status.phase}'=Complete --timeout="$timeout"
  kc -n "$ns" get kmu baton
}
log "fresh install: one agent pod per node, slot a active"
wait_rollout "$agent_repo:$v1"
nodes=$(kc get nodes -o name | wc -l)
pods=$(kc -n "$ns" get pods -l app.kubernetes.io/name=baton-agent -o name | wc -l)
((pods == nodes)) || fail "$pods agent pods for $nodes nodes"

log "demo backend and client"
kc apply -f "$kit/demo.yaml"
kc -n baton-demo rollout status deploy/web --timeout="$timeout"
kc -n baton-demo wait pod/client --for=condition=Ready --timeout="$timeout"
# Lines of the client's log starting with $1 (grep -c reads it all: no SIGPIPE under pipefail).
client_lines() { kc -n baton-demo logs client | grep -c "^$1" || true; }
for _ in $(seq 60); do
  (($(client_lines ok) > 0)) && break
  sleep 1
done
(($(client_lines ok) > 0)) || fail "the client never reached the Service"
client_node=$(kc -n baton-demo get pod client -o jsonpath='{.spec.nodeName}')

# baton_datapath_connects_total of the agent pod on the client's node.
connects() {
  local port=19095 pf value
  kc -n "$ns" port-forward "pod/baton-$client_node" "$port:9095" >/dev/null 2>&1 &
  pf=$!
  for _ in $(seq 20); do
    value=$(curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null |
      awk '/^baton_datapath_connects_total/ {s += $NF} END {print s + 0}') && break
    sleep 0.5
  done
  kill "$pf" 2>/dev/null || true
  echo "${value:-0}"
}
before=$(connects)

log "upgrade: agent $v1 -> $v2"
kc -n "$ns" get kmu baton -w &
watch_pid=$!
hm upgrade baton "$repo/charts/baton" -n "$ns" --reuse-values --set "agent.image.tag=$v2" --wait --timeout "$timeout"
wait_rollout "$agent_repo:$v2"
kill "$watch_pid" 2>/dev/null || true
watch_pid=

log "checks"
for pod in $(kc -n "$ns" get pods -l app.kubernetes.io/name=baton-agent -o name); do
  active=$(kc -n "$ns" get "$pod" -o jsonpath='{.metadata.annotations.baton\.dev/active-slot}')
  image=$(kc -n "$ns" get "$pod" -o jsonpath="{.spec.containers[?(@.name==\"slot-$active\")].image}")
  [[ $image == "$agent_repo:$v2" ]] || fail "$pod: active slot $active runs $image, not $agent_repo:$v2"
  echo "$pod: slot $active active on $image"
done
after=$(connects)
echo "datapath connects on $client_node: $before before the upgrade, $after after"
((after > 0)) || fail "Baton's datapath on $client_node saw no connect"
ok=$(client_lines ok)
failed=$(client_lines FAIL)
echo "client: $ok connections ok, $failed failed"
((failed == 0)) || fail "$failed client connections failed during the upgrade"
log "PASS: $nodes nodes upgraded to $agent_repo:$v2 without a failed connection"
