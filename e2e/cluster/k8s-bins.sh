#!/usr/bin/env bash
# Builds (or reuses) the Kubernetes binaries the tests start on loopback:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet (the real-node rig,
# e2e/node/), and kube-proxy (baton-bench's side-by-side comparison, run only
# inside the bench's private network namespace). No Docker, no kind: all are built from their Go modules through
# the Go module proxy, the Kubernetes commands in one `go build` so they
# share one compilation of the tree.
#
# Usage: e2e/cluster/k8s-bins.sh            # build if missing, print the bin dir
#        export BATON_K8S_BIN_DIR=$(e2e/cluster/k8s-bins.sh)
#
# Env: BATON_CACHE (default ~/.cache/baton), BATON_K8S_VERSION (default v1.34.4),
#      BATON_ETCD_VERSION (default v3.6.16), BATON_HELM_VERSION (default v4.3.2),
#      BATON_GO (default: go on PATH).
#
# Why the rewrite below: k8s.io/kubernetes and etcd's server module both point
# their sibling modules at relative paths (`replace k8s.io/api => ./staging/...`,
# `go.etcd.io/etcd/api/v3 => ../api`). Those directories are not in the module
# zips, so we drop every relative replace and require the published version of
# the sibling instead (k8s vX.Y.Z ships its staging modules as v0.Y.Z; etcd's
# siblings share the server's version).
set -euo pipefail

K8S_VERSION="${BATON_K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${BATON_ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${BATON_HELM_VERSION:-v4.3.2}"
CACHE="${BATON_CACHE:-$HOME/.cache/baton}"
OUT="$CACHE/k8s/$K8S_VERSION"
GO="${BATON_GO:-go}"

export GOTOOLCHAIN=local GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0

log() { echo "k8s-bins: $*" >&2; }

command -v "$GO" >/dev/null || { log "go not found (install Go >= 1.24)"; exit 1; }
command -v python3 >/dev/null || { log "python3 not found"; exit 1; }
mkdir -p "$OUT"

# module_src MODULE VERSION DEST: copy the module's source to a writable DEST.
module_src() {
  local dir
  dir=$("$GO" mod download -json "$1@$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$3"
  cp -r "$dir" "$3"
  chmod -R u+w "$3"
}

# pin_relative_replaces DIR SIBLING_VERSION: drop `=> ./x` / `=> ../x` replaces;
# siblings that are required get SIBLING_VERSION instead.
pin_relative_replaces() {
  (cd "$1" && "$GO" mod edit -json | python3 -c '
import json, sys
mod = json.load(sys.stdin)
required = {r["Path"] for r in mod.get("Require") or []}
for r in mod.get("Replace") or []:
    new = r["New"]["Path"]
    if new.startswith("./") or new.startswith("../"):
        old = r["Old"]["Path"]
        print("-dropreplace=" + old)
        if old in required:
            print("-require=" + old + "@" + sys.argv[1])
' "$2" | xargs "$GO" mod edit)
}

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

# build_k8s CMD...: build the given commands of k8s.io/kubernetes in one go.
build_k8s() {
  local src="$CACHE/k8s/src/kubernetes-$K8S_VERSION" minor staging tmp="$OUT/.build" pkgs=() c
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  staging="v0.${K8S_VERSION#v1.}"
  log "building $* $K8S_VERSION (staging modules $staging)"
  module_src k8s.io/kubernetes "$K8S_VERSION" "$src"
  pin_relative_replaces "$src" "$staging"
  for c in "$@"; do pkgs+=("./cmd/$c"); done
  rm -rf "$tmp" && mkdir -p "$tmp"
  local v=k8s.io/component-base/version
  (cd "$src" && "$GO" build -trimpath \
    -ldflags "-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
    -o "$tmp/" "${pkgs[@]}")
  for c in "$@"; do mv "$tmp/$c" "$OUT/$c"; done
  rm -rf "$src" "$tmp"
}

build_etcd() {
  local src="$CACHE/k8s/src/etcd-$ETCD_VERSION"
  log "building etcd $ETCD_VERSION"
  module_src go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$src"
  pin_relative_replaces "$src" "$ETCD_VERSION"
  (cd "$src" && "$GO" build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" .)
  mv "$OUT/etcd.tmp" "$OUT/etcd"
  echo "$ETCD_VERSION" >"$OUT/etcd.version"
  rm -rf "$src"
}

# Helm, for the real-node scenarios (`helm install`/`upgrade` of charts/baton).
build_helm() {
  log "building helm $HELM_VERSION"
  GOBIN="$OUT/.helm" "$GO" install -trimpath -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  mv "$OUT/.helm/helm" "$OUT/helm"
  rm -rf "$OUT/.helm"
  echo "$HELM_VERSION" >"$OUT/helm.version"
}

timed() {
  local start=$SECONDS
  "$@"
  log "$1 took $((SECONDS - start))s"
}

mkdir -p "$CACHE/k8s/src"
if [ -x "$OUT/etcd" ] && [ "$(cat "$OUT/etcd.version" 2>/dev/null)" = "$ETCD_VERSION" ]; then
  log "reusing $OUT/etcd"
else
  timed build_etcd
fi
missing=()
for c in "${K8S_CMDS[@]}"; do
  if [ -x "$OUT/$c" ]; then log "reusing $OUT/$c"; else missing+=("$c"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  timed build_k8s "${missing[@]}"
fi
if [ -x "$OUT/helm" ] && [ "$(cat "$OUT/helm.version" 2>/dev/null)" = "$HELM_VERSION" ]; then
  log "reusing $OUT/helm"
else
  timed build_helm
fi
echo "$OUT"
