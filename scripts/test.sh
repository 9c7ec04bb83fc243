#!/usr/bin/env bash
# The test suite: unit tests, real-kernel datapath tests, operator and chart tests.
# Usage (as root, from the repository): ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

if [ -x e2e/cluster/k8s-bins.sh ] && [ -z "${BATON_SKIP_APISERVER:-}" ]; then
  echo ">> kube-apiserver + etcd for the operator tests (cached after the first build)"
  e2e/cluster/k8s-bins.sh
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
