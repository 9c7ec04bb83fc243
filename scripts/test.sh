#!/usr/bin/env bash
# The test suite: unit tests, real-kernel datapath tests, operator and chart tests.
# Usage (as root, from the repository): ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

if [ -z "${BATON_SKIP_APISERVER:-}" ]; then
  echo ">> etcd, kube-apiserver, controller-manager, scheduler, kubelet, helm (cached after the first build)"
  BATON_K8S_BIN_DIR=$(e2e/cluster/k8s-bins.sh)
  export BATON_K8S_BIN_DIR
fi
if [ -f charts/tests/requirements.txt ]; then
  python3 -m pip install -q -r charts/tests/requirements.txt
fi

echo ">> cargo build"
cargo build --workspace --all-targets --locked 2>&1 | tail -n 3
echo ">> cargo build: the agent for the other map layout (e2e upgrades across layouts)"
cargo build -p baton-agent --features layout-v2 --locked --target-dir target/layout-v2 2>&1 | tail -n 3
echo ">> cargo test"
cargo test --workspace --locked -- --test-threads="${BATON_TEST_THREADS:-2}"
if [ -d charts/tests ]; then
  echo ">> chart tests"
  python3 -m pytest -q charts/tests
fi

if [ -z "${BATON_SKIP_REAL_NODE:-}" ]; then
  # A real kubelet + containerd (e2e/node/rig.sh): images built here, the
  # chart installed with Helm, hot upgrades under traffic. The rig is torn
  # down on any exit, also when a scenario fails.
  echo ">> real-node scenarios (kubelet + containerd, e2e/node/rig.sh)"
  images="${BATON_CACHE:-$HOME/.cache/baton}/images"
  e2e/images/build.sh --profile dev --tag rig --out "$images"
  cargo test -p baton-e2e --features real-node --test real_node --locked --no-run 2>&1 | tail -n 1
  trap 'e2e/node/rig.sh down' EXIT
  e2e/node/rig.sh up --images "$images"
  e2e/node/rig.sh exec cargo test -p baton-e2e --features real-node --test real_node --locked \
    --offline -- --test-threads=1
  e2e/node/rig.sh down
  trap - EXIT
fi
