#!/usr/bin/env bash
# Single-machine demo: local backends, the agent with a services file, a client
# in its own cgroup + network namespace, and where its connections went; then a
# live hot upgrade to the layout-2 build and back while the client connects.
# Usage (as root, from the repository): ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

echo ">> building (release)"
# The probe needs none of baton-e2e's Kubernetes test support (default features).
cargo build --release --locked -q -p baton-agent -p baton-e2e --no-default-features \
  --bin baton-agent --bin baton-probe
echo ">> building the agent for map layout 2 (release; the hot upgrade's other build, same dependencies)"
cargo xtask agent-v2 --profile release -p baton-agent -p baton-e2e --no-default-features
AGENT=target/release/baton-agent
AGENT_V2=target/layout-v2/release/baton-agent
PROBE=target/release/baton-probe

CG_ROOT=${BATON_CGROUP_ROOT:-$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)}
[ -n "$CG_ROOT" ] || { echo "no cgroup v2 mount found; set BATON_CGROUP_ROOT" >&2; exit 1; }
WORK=$(mktemp -d /tmp/baton-demo.XXXXXX)
CG="$CG_ROOT/baton-demo-$$"
BPF="$WORK/bpf"
AGENT_PID=""
OLD_PID=""
PROBE_PID=""
cleanup() {
  for pid in "$PROBE_PID" "$OLD_PID" "$AGENT_PID"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  "$AGENT" teardown --bpffs "$BPF" >/dev/null 2>&1 || true
  umount "$BPF" 2>/dev/null || true
  rmdir "$CG" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$CG" "$BPF"
mount -t bpf bpf "$BPF"

write_services() { # $1: endpoints of "web"
  cat > "$WORK/services.yaml" <<YAML
services:
  - name: web            # random over three backends
    vips: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
    policy: random
    endpoints:
$1
  - name: db             # failover: the standby only when the primary is gone
    vips: [10.96.0.20]
    ports: [{port: 5432, targetPort: 15432}]
    policy: failover
    endpoints:
      - {address: 127.0.0.20, priority: 0}
      - {address: 127.0.0.21, priority: 1}
  - name: api6           # IPv6 VIP, per-endpoint ports
    vips: ["fd00::30"]
    ports: [{port: 443}]
    endpoints:
      - {address: "::1", port: 9001}
      - {address: "::1", port: 9002}
YAML
}
write_services "      - {address: 127.0.0.10}
      - {address: 127.0.0.11}
      - {address: 127.0.0.12}"

start_agent() { # $1: binary
  RUST_LOG=warn "$1" run --services "$WORK/services.yaml" --cgroup "$CG" --bpffs "$BPF" \
    --run-dir "$WORK/run" --metrics-addr 127.0.0.1:9095 --poll-ms 100 &
  AGENT_PID=$!
}
echo ">> starting baton-agent (cgroup $CG, pins $BPF)"
start_agent "$AGENT"
for _ in $(seq 100); do [ -S "$WORK/run/admin.sock" ] && break; sleep 0.1; done
sleep 0.5

BACKENDS=(--backend 127.0.0.10:8080 --backend 127.0.0.11:8080 --backend 127.0.0.12:8080
          --backend 127.0.0.20:15432 --backend 127.0.0.21:15432 --backend '[::1]:9001' --backend '[::1]:9002')
TARGETS=(--target 10.96.0.10:80 --target 10.96.0.20:5432 --target '[fd00::30]:443')
traffic() {
  "$PROBE" run --cgroup "$CG" "${BACKENDS[@]}" "${TARGETS[@]}" --connects 3000 > "$WORK/report.json"
  python3 - "$WORK/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for t in r["targets"]:
    lat = t.get("latency", {})
    print(f"  {t['target']:>18}  ok {t['ok']:>5}  failed {t['failed']:>3}  p50 {lat.get('p50_ns', 0)/1000:6.1f} us   ->  " +
          ", ".join(f"{k} x{v}" for k, v in sorted(t["identities"].items())))
PY
}

echo
echo ">> 3000 connects from the client cgroup (its own netns; VIPs exist only in the BPF maps)"
traffic
echo
echo ">> edit: web loses 127.0.0.11, db's primary goes away"
write_services "      - {address: 127.0.0.10}
      - {address: 127.0.0.12}"
sed -i '/127.0.0.20, priority: 0/d' "$WORK/services.yaml"
sleep 0.5
traffic
echo
echo ">> a broken edit is rejected; the previous state keeps serving"
sed -i 's/127.0.0.10}/127.0.0.300}/' "$WORK/services.yaml"
sleep 0.5
"$AGENT" status --run-dir "$WORK/run" | python3 -c 'import json,sys; print("  source_error:", json.load(sys.stdin)["source_error"])'
traffic

# A hot upgrade: the new build starts next to the running agent, takes the maps,
# links and sockets over (migrating the maps whose layout changed) and the old
# agent exits 0. $1: the new build's binary.
upgrade() {
  OLD_PID=$AGENT_PID
  start_agent "$1"
  while kill -0 "$OLD_PID" 2>/dev/null; do
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "the new agent failed; the old one keeps serving" >&2; exit 1; }
    sleep 0.05
  done
  wait "$OLD_PID" || { echo "the old agent exited with $?" >&2; exit 1; }
  OLD_PID=""
  until "$AGENT" status --run-dir "$WORK/run" > "$WORK/status.json" 2>/dev/null &&
      python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); sys.exit(v["pid"] != int(sys.argv[2]) or v["last_sync"] is None)' \
        "$WORK/status.json" "$AGENT_PID"; do
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "the new agent exited" >&2; exit 1; }
    sleep 0.05
  done
  python3 - "$WORK/status.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
h, m = v["handover"], v["handover"]["maps"]
print(f"  layout {h['from_layout']} -> {v['layout_version']} (pid {v['pid']}): handover {h['handover_us']/1000:.1f} ms"
      f" (pre-copy {h['precopy_us']/1000:.1f} ms), freeze {h['freeze_us']/1000:.2f} ms;"
      f" maps reused {m['reused']}, migrated {m['migrated']}; entries copied {m['entries_copied']}; journal keys {h['journal_keys']}")
PY
}

echo
echo ">> live hot upgrade to the layout-2 build and back, while the client connects (2000/s) and holds 30 connections"
sed -i 's/127.0.0.300}/127.0.0.10}/' "$WORK/services.yaml"   # undo the broken edit
rm -f "$WORK/ready" "$WORK/stop"
"$PROBE" run --cgroup "$CG" "${BACKENDS[@]}" "${TARGETS[@]}" --duration-ms 60000 --rate 2000 \
  --hold 30 --ready-file "$WORK/ready" --stop-file "$WORK/stop" > "$WORK/upgrade.json" &
PROBE_PID=$!
for _ in $(seq 100); do [ -f "$WORK/ready" ] && break; sleep 0.05; done
sleep 0.5
upgrade "$AGENT_V2"
sleep 0.5
upgrade "$AGENT"
sleep 0.5
touch "$WORK/stop"; wait "$PROBE_PID"; PROBE_PID=""
python3 - "$WORK/upgrade.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
serves = {"10.96.0.10:80": {"127.0.0.10:8080", "127.0.0.12:8080"},
          "10.96.0.20:5432": {"127.0.0.21:15432"},
          "[fd00::30]:443": {"[::1]:9001", "[::1]:9002"}}
misrouted = sum(n for t in r["targets"] for i, n in t["identities"].items() if i not in serves[t["target"]])
tot, hold = r["totals"], r["hold"]
print(f"  connects during the upgrades: attempted {tot['attempted']}, failed {tot['failed']}, misrouted {misrouted}"
      f"; connections held across both: {hold['alive']}/{hold['requested']} alive")
PY
echo
echo ">> baton-agent verify"
"$AGENT" verify --run-dir "$WORK/run" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  services %(services)s, endpoints %(endpoints)s, backends %(backends)s, violations:" % r, len(r["violations"]))'
echo ">> metrics (127.0.0.1:9095/metrics)"
exec 3<>/dev/tcp/127.0.0.1/9095; printf 'GET /metrics HTTP/1.1\r\n\r\n' >&3
grep -E '^baton_(datapath_connects_total|services |endpoints |sync_total)' <&3 | sed 's/^/  /'
exec 3>&-
echo
echo ">> stopping the agent (full teardown)"
kill "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""
