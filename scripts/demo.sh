#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs septum's demo on this host, as root: the shop
# in examples/shop becomes network-namespace pods wired by Debian's CNI plugins with septum-cni
# chained after them, enforced by the agent in standalone mode. The reachability matrix is shown
# before and after the policies, and every cell that changed gets a one-line `septum explain`.
# The lab stays up afterwards; `septum lab down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/septum/target}"
echo "[demo] building septum and septum-cni (release)"
cargo build --locked --release -q -p septum-cli -p septum-cni
bin="$CARGO_TARGET_DIR/release"
septum() { "$bin/septum" "$@"; }
lab_dir="${SEPTUM_LAB_DIR:-/run/septum-lab}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

septum lab down >/dev/null
echo
echo "== septum lab up examples/shop/pods.yaml"
septum lab up examples/shop/pods.yaml
septum lab status

probe_all() { # $1: tag
  for port in 80 5432; do
    echo
    echo "-- TCP port $port through Service ClusterIPs ('.' connected, X timed out, R refused, E error)"
    septum lab probe --via service --port "$port" --protocol TCP --timeout 500ms
    septum lab probe --via service --port "$port" --protocol TCP --timeout 500ms --output json >"$out/$1-$port.json"
  done
}

echo
echo "== before any policy: every pod reaches every pod"
probe_all before

echo
echo "== septum lab apply examples/shop/policies.yaml"
septum lab apply examples/shop/policies.yaml
echo
echo "== after the policies"
probe_all after

echo
echo "== what changed, and why (septum explain)"
for port in 80 5432; do
  python3 - "$out/before-$port.json" "$out/after-$port.json" <<'PY' | while read -r from to port; do
import json, sys
before = {(r["from"], r["to"]): r["result"] for r in json.load(open(sys.argv[1]))["results"]}
for r in json.load(open(sys.argv[2]))["results"]:
    if before.get((r["from"], r["to"])) != r["result"]:
        print(r["from"], r["to"], r["port"])
PY
    printf '%-16s -> %-16s :%-5s ' "$from" "$to" "$port"
    septum explain --manifests "$lab_dir/datastore" --from "$from" --to "$to" --port "$port" --output json |
      python3 -c '
import json, sys
e = json.load(sys.stdin)
sides = [s for s in (e["egress"], e["ingress"]) if s["action"] == e["verdict"] and s["policed"]]
why = "; ".join("%s: %s" % (s["direction"], s.get("decisiveRule") or s["action"]) for s in sides) or "not policed"
print("%s (%s)" % (e["verdict"].upper(), why))'
  done
done
echo
echo "== what the flow log saw (septum flows)"
sleep 1
septum flows --verdict dropped --last 10
echo
septum flows denied
echo
septum flows graph --format dot > "$lab_dir/service-map.dot"
septum flows graph --format svg -o "$lab_dir/service-map.svg"
echo "service map: $lab_dir/service-map.svg (and .dot)"
echo
echo "The lab is still up: try 'septum lab probe --port 80', edit a policy with 'septum lab apply',"
echo "or remove it all with '$bin/septum lab down'."
