#!/usr/bin/env bash
# Builds baton-agent of the pinned earlier revision (e2e/pinned-revision),
# both map layouts, for e2e/tests/handover_revisions.rs (handovers between
# revisions): <target>/pinned/<profile-dir>/baton-agent-v1 and -v2.
#
# Usage: scripts/build-pinned.sh [--release | --profile NAME]   (default: dev)
#
# The source is a git worktree of that commit at <target>/pinned/src, created
# or reused. It builds into the main target directory, so the dependencies
# already built for the main workspace are reused instead of rebuilt:
# - the main workspace's [profile.*] settings apply (the pinned Cargo.toml
#   may predate them, and other settings mean other dependency artifacts);
# - the package selection is the main build's (--workspace --bin baton-agent,
#   as `cargo xtask build`), so dependency features unify the same way;
# - the pinned workspace's own packages get `incremental` flipped. Cargo
#   names a workspace member's artifacts by its path relative to the
#   workspace root: without a difference the pinned baton-agent would share
#   the main one's artifact and fingerprint names, and each build would take
#   the other's output as fresh. The script checks that the two builds'
#   artifacts are disjoint and fails if they are not.
# Building uplifts the pinned binary to <target>/<profile-dir>/baton-agent;
# the main workspace's is put back at the end (no recompile when fresh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
cd "$root"

profile=dev
case "${1:-}" in
  "") ;;
  --release) profile=release ;;
  --profile) profile=${2:?--profile needs a name} ;;
  *) echo "usage: $0 [--release | --profile NAME]" >&2; exit 2 ;;
esac
case "$profile" in
  dev | test) pdir=debug ;;
  release | bench) pdir=release ;;
  *) pdir=$profile ;;
esac

rev=$(grep -Eo '^[0-9a-f]{40}' e2e/pinned-revision | head -n 1 || true)
if [ -z "$rev" ]; then
  echo "e2e/pinned-revision: no 40-hex commit id on a line of its own" >&2
  exit 1
fi
if ! git cat-file -e "$rev^{commit}" 2>/dev/null; then
  echo "commit $rev (e2e/pinned-revision) is not in this clone's history;" \
    "fetch it: git fetch origin $rev (or git fetch --unshallow)" >&2
  exit 1
fi

target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$target/pinned"
target=$(cd "$target" && pwd -P)
src=$target/pinned/src
out=$target/pinned/$pdir
t0=$(date +%s)
step() { echo ">> $* ($(($(date +%s) - t0)) s)"; }

# The worktree: reused when it is one (at the pinned commit, clean).
if [ -d "$src" ] && [ "$(git -C "$src" rev-parse --show-toplevel 2>/dev/null)" = "$src" ]; then
  if [ "$(git -C "$src" rev-parse HEAD)" != "$rev" ] || [ -n "$(git -C "$src" status --porcelain)" ]; then
    step "worktree $src: checking out $rev"
    git -C "$src" checkout --quiet --force --detach "$rev"
    git -C "$src" clean -fdxq
  fi
else
  step "worktree $src at $rev"
  rm -rf "$src"
  git worktree prune
  git worktree add --quiet --detach "$src" "$rev"
fi

# The main workspace's profiles, as a cargo config file.
profiles=$target/pinned/profiles.toml
awk '/^\[/ { keep = ($0 ~ /^\[profile\./) } keep' Cargo.toml >"$profiles"

# Flip `incremental` for the pinned workspace's packages (see above): the
# main build's members have CARGO_INCREMENTAL if set, else the profile's
# default (on for dev and test, off otherwise).
case "${CARGO_INCREMENTAL:-}" in
  0) incremental=true ;;
  "") case "$profile" in dev | test) incremental=false ;; *) incremental=true ;; esac ;;
  *) incremental=false ;;
esac
members=$(cd "$src" && cargo tree --locked -p baton-agent -e normal,build --prefix none \
  --format '{p}' | grep -F "($src/" | cut -d' ' -f1 | sort -u)
overrides=()
for m in $members; do
  overrides+=(--config "profile.$profile.package.$m.incremental=$incremental")
done

# Artifact names of the workspace's own packages in a build's JSON messages.
own_artifacts() {
  grep -E '"package_id":"[^"]*path\+file://' "$1" |
    grep -Eo '/(deps/[^"/]*-[0-9a-f]{16}|build/[^"/]*-[0-9a-f]{16})' | sed -E 's/\.[a-z]+$//' | sort -u
}

json=$target/pinned/cargo-messages
mkdir -p "$out"
rm -f "$out/revision"
: >"$json.pinned"
for layout in 1 2; do
  features=()
  [ "$layout" = 2 ] && features=(--features baton-agent/layout-v2)
  step "cargo build: baton-agent of $rev, layout $layout"
  (cd "$src" && env -u CARGO_INCREMENTAL cargo build --locked --profile "$profile" \
    --workspace --bin baton-agent "${features[@]}" --target-dir "$target" \
    --config "$profiles" "${overrides[@]}" --message-format json-render-diagnostics) \
    >>"$json.pinned"
  # Through a temporary name: a test may be running the old file.
  cp "$target/$pdir/baton-agent" "$out/.baton-agent-v$layout.tmp"
  mv "$out/.baton-agent-v$layout.tmp" "$out/baton-agent-v$layout"
done

step "cargo build: the main workspace's baton-agent back in $target/$pdir"
cargo build --locked --profile "$profile" --workspace --bin baton-agent \
  --target-dir "$target" --message-format json-render-diagnostics >"$json.main"
shared=$(comm -12 <(own_artifacts "$json.pinned") <(own_artifacts "$json.main"))
if [ -n "$shared" ]; then
  echo "the pinned and the main build wrote the same artifacts (cargo did not tell them" \
    "apart; see the incremental flip in $0):" >&2
  echo "$shared" >&2
  # Whichever build ran last looks fresh to the other: make both rebuild.
  cargo clean --profile "$profile" --target-dir "$target" $(printf -- '-p %s ' $members) || true
  exit 1
fi
# The test checks that its binaries were built from e2e/pinned-revision.
echo "$rev" >"$out/revision"

echo ">> pinned agents of $rev ($profile), in $(($(date +%s) - t0)) s:"
ls -l "$out/baton-agent-v1" "$out/baton-agent-v2"
