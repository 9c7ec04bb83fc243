#!/usr/bin/env bash
# Single-machine demo: local backends, the agent with a services file, a client
# in its own cgroup + network namespace, and where its connections went.
# Usage (as root, from the repository): ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

echo ">> building (release)"
cargo build --release --locked -p baton-agent -p baton-e2e --bins 2>&1 | tail -n 1
AGENT=target/release/baton-agent
PROBE=target/release/baton-probe

CG_ROOT=${BATON_CGROUP_ROOT:-$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)}
[ -n "$CG_ROOT" ] || { echo "no cgroup v2 mount found; set BATON_CGROUP_ROOT" >&2; exit 1; }
WORK=$(mktemp -d /tmp/baton-demo.XXXXXX)
CG="$CG_ROOT/baton-demo-$$"
BPF="$WORK/bpf"
AGENT_PID=""
cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
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

echo ">> starting baton-agent (cgroup $CG, pins $BPF)"
RUST_LOG=warn "$AGENT" run --services "$WORK/services.yaml" --cgroup "$CG" --bpffs "$BPF" \
  --run-dir "$WORK/run" --metrics-addr 127.0.0.1:9095 --poll-ms 100 &
AGENT_PID=$!
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
