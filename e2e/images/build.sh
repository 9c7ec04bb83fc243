#!/usr/bin/env bash
# Builds Baton's container images from host-built binaries, without a registry.
#
#   e2e/images/build.sh [--tool buildah|docker] [--tag TAG] [--profile release|dev]
#                       [--out DIR] [--skip-cargo] [--test-images]
#
# Images (each *.Dockerfile here names its repository in a dev.baton.image label):
#   ghcr.io/baton-dev/baton-agent:TAG-v1     baton-agent, map layout 1
#   ghcr.io/baton-dev/baton-agent:TAG-v2     baton-agent --features layout-v2 (map layout 2)
#   ghcr.io/baton-dev/baton-operator:TAG     baton-operator
#   ghcr.io/baton-dev/baton-probe:TAG        baton-probe (test backends/clients)
#   ghcr.io/baton-dev/baton-empty:1          static pause (idle slot, rig sandbox)
# With --test-images, two bad builds for the preflight and canary scenarios
# (baton-agent with the test-hooks feature, a fault switched on by the image's
# environment; agent-test.Dockerfile):
#   ghcr.io/baton-dev/baton-agent:TAG-broken  programs the verifier rejects
#   ghcr.io/baton-dev/baton-agent:TAG-faulty  refuses 1 connect to a VIP in 4
#
# Each image is FROM scratch: the binary plus the shared libraries `ldd` lists,
# so one definition serves buildah (the real-node rig, e2e/node/) and docker
# (e2e/kind/run.sh). With buildah the images are also written to --out as
# docker-archive tars (NAME.tar) for `ctr images import`.
#
# Env: CARGO (default cargo), BATON_CACHE (default ~/.cache/baton: buildah's
# storage lives under it).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tool=buildah tag=dev profile=release out="" skip_cargo=0 test_images=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tool) tool=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --skip-cargo) skip_cargo=1; shift ;;
    --test-images) test_images=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$tool" in buildah|docker) ;; *) echo "build.sh: --tool buildah|docker" >&2; exit 2 ;; esac
command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (Debian: apt-get install $tool)" >&2; exit 2; }
command -v gcc >/dev/null || { echo "build.sh: gcc not found (the empty image's pause program)" >&2; exit 2; }

CACHE="${BATON_CACHE:-$HOME/.cache/baton}"
CARGO="${CARGO:-cargo}"
[ "$profile" = dev ] && bin_dir="$repo/target/debug" || bin_dir="$repo/target/$profile"
ctx=$(mktemp -d "${TMPDIR:-/tmp}/baton-images.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
log() { echo "images: $*" >&2; }

# stage NAME BINARY DEST_IN_IMAGE: a context dir with rootfs/ holding the
# binary and every library it loads (ldd), at their absolute paths.
stage() {
  local root="$ctx/$1/rootfs" lib
  mkdir -p "$root$(dirname "$3")"
  cp "$2" "$root$3"
  # Debug info is most of a binary's size; symbols stay for backtraces.
  strip --strip-debug "$root$3" 2>/dev/null || true
  for lib in $(ldd "$2" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

# build DOCKERFILE NAME IMAGE [ARCHIVE [BUILD_ARG...]]: build the staged
# context NAME as IMAGE (written to --out as ARCHIVE.tar, default NAME.tar).
build() {
  local file="$here/$1" dir="$ctx/$2" image=$3 archive=${4:-$2}
  local args=() a
  for a in "${@:5}"; do args+=(--build-arg "$a"); done
  log "$tool build $image ($1${5:+ ${*:5}})"
  if [ "$tool" = docker ]; then
    docker build -q "${args[@]}" -f "$file" -t "$image" "$dir" >/dev/null
  else
    local store=(--storage-driver vfs --root "$CACHE/buildah/root" --runroot "$CACHE/buildah/run")
    buildah "${store[@]}" bud -q --isolation chroot "${args[@]}" -f "$file" -t "$image" "$dir" >/dev/null
    if [ -n "$out" ]; then
      mkdir -p "$out"
      rm -f "$out/$archive.tar"
      buildah "${store[@]}" push -q "$image" "docker-archive:$out/$archive.tar:$image" >/dev/null
    fi
  fi
}

cargo_profile=(--profile "$profile")
[ "$profile" = dev ] && sub=debug || sub=$profile
v2_bin="$repo/target/layout-v2/$sub/baton-agent"
hooks_bin="$repo/target/test-hooks/$sub/baton-agent"
if [ "$skip_cargo" = 0 ]; then
  cd "$repo"
  # --workspace: the same dependency features as `cargo xtask build`, so
  # nothing but the three binaries is compiled after a test build.
  log "cargo build (profile $profile): baton-agent, baton-operator, baton-probe"
  "$CARGO" build -q --locked "${cargo_profile[@]}" --workspace \
    --bin baton-agent --bin baton-operator --bin baton-probe
  # The layout-2 agent, from the same dependency tree, at
  # target/layout-v2/<profile>/baton-agent where the e2e tests look for it.
  log "cargo build (profile $profile): baton-agent layout 2 (target/layout-v2)"
  "$CARGO" xtask agent-v2 --profile "$profile"
  if [ "$test_images" = 1 ]; then
    log "cargo build (profile $profile): baton-agent with test-hooks (target/test-hooks)"
    "$CARGO" xtask agent-hooks --profile "$profile"
  fi
fi
if [ "$test_images" = 1 ]; then
  [ -x "$hooks_bin" ] || { echo "build.sh: $hooks_bin missing (run without --skip-cargo)" >&2; exit 2; }
fi
for b in "$bin_dir/baton-agent" "$bin_dir/baton-operator" "$bin_dir/baton-probe" "$v2_bin"; do
  [ -x "$b" ] || { echo "build.sh: $b missing (run without --skip-cargo)" >&2; exit 2; }
done
mkdir -p "$ctx/bin"

gcc -static -O2 -o "$ctx/bin/pause" "$here/pause.c"
stage agent-v1 "$bin_dir/baton-agent" /usr/local/bin/baton-agent
stage agent-v2 "$v2_bin" /usr/local/bin/baton-agent
stage operator "$bin_dir/baton-operator" /usr/local/bin/baton-operator
stage probe "$bin_dir/baton-probe" /usr/local/bin/baton-probe
stage empty "$ctx/bin/pause" /pause

build agent.Dockerfile agent-v1 "ghcr.io/baton-dev/baton-agent:$tag-v1"
build agent.Dockerfile agent-v2 "ghcr.io/baton-dev/baton-agent:$tag-v2"
build operator.Dockerfile operator "ghcr.io/baton-dev/baton-operator:$tag"
build backend.Dockerfile probe "ghcr.io/baton-dev/baton-probe:$tag"
build empty.Dockerfile empty "ghcr.io/baton-dev/baton-empty:1"
if [ "$test_images" = 1 ]; then
  stage agent-hooks "$hooks_bin" /usr/local/bin/baton-agent
  build agent-test.Dockerfile agent-hooks "ghcr.io/baton-dev/baton-agent:$tag-broken" agent-broken \
    HOOK_NAME=BATON_TEST_BREAK_PROGRAM HOOK_VALUE=baton_connect4
  build agent-test.Dockerfile agent-hooks "ghcr.io/baton-dev/baton-agent:$tag-faulty" agent-faulty \
    HOOK_NAME=BATON_TEST_REFUSE_ONE_IN HOOK_VALUE=4
fi
log "done${out:+ (archives in $out)}"
