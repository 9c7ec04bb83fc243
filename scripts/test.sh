#!/usr/bin/env bash
# The test suite: unit tests, real-kernel datapath and handover tests, the
# operator against a real kube-apiserver, the chart, and the real-node tier
# (kubelet + containerd, images built here). See `cargo xtask test --help`.
# Usage (as root, from the repository): ./scripts/test.sh [TIER...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
tiers=("$@")
if [ ${#tiers[@]} -eq 0 ] && [ -n "${BATON_SKIP_REAL_NODE:-}" ]; then
  tiers=(unit integration chart)
fi
exec cargo xtask test "${tiers[@]}"
