#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a bounded time each,
# starting from the committed seeds in fuzz/corpus/<target>/. New inputs go
# to a scratch copy, so the committed corpus only grows by hand.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default 30, all)
# Needs a nightly toolchain and cargo-fuzz: `rustup toolchain install nightly
# --profile minimal` and `cargo install cargo-fuzz`. Exits non-zero on the
# first crash; the input is kept in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
secs=${1:-30}
shift || true
cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  [ -d "corpus/$t" ] && cp -r "corpus/$t/." "$scratch/$t/"
  echo ">> fuzz $t for ${secs}s"
  cargo +nightly fuzz run "$t" "$scratch/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
done
