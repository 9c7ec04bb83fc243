#!/usr/bin/env bash
# The real-node tier: images built here (dev profile), the rig brought up
# (e2e/node/rig.sh), the scenarios of e2e/tests/real_node.rs run inside it.
# The rig is torn down on any exit, also when a scenario fails.
# Usage (as root, from anywhere): e2e/node/test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
images="${BATON_CACHE:-$HOME/.cache/baton}/images"
e2e/images/build.sh --profile dev --tag rig --out "$images" --test-images
cargo test -q -p baton-e2e --features real-node --test real_node --locked --no-run
trap 'e2e/node/rig.sh down' EXIT
e2e/node/rig.sh up --images "$images"
e2e/node/rig.sh exec cargo test -p baton-e2e --features real-node --test real_node --locked \
  --offline -- --test-threads=1
