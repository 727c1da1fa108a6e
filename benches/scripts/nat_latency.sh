#!/usr/bin/env bash
# Issue 17: time per token through a relayed hop vs a direct one, at the same emulated
# link (root: network namespaces, nftables, tc netem). Three nodes split the model evenly;
# node-0 is public (the relay, the first hop and the entry), node-1 and node-2 sit behind
# NATs of one kind per row:
#   public   no NATs at all                       node-1 <-> node-2 direct
#   punched  node-1, node-2 behind cone NATs      node-1 <-> node-2 hole-punched
#   relayed  node-1, node-2 behind symmetric NATs node-1 <-> node-2 relayed through node-0
# Every node's uplink is shaped by netem (`--latency`), so a relayed datagram is delayed
# twice (node-1 -> node-0 -> node-2) where a direct one is delayed once. For each row it
# waits until node-1 sees node-2 on the expected path, then streams REQS greedy requests
# of TOKENS tokens at node-0's API and prints the median time per token after the first.
#
#   LAMINA_BIN=target/release/lamina benches/scripts/nat_latency.sh [MODEL] [LATENCY]
set -u
L=${LAMINA_BIN:-target/release/lamina}
M=${1:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}
LAT=${2:-20ms}
REQS=${REQS:-3}
TOKENS=${TOKENS:-48}
D=$(mktemp -d)
trap '"$L" testnet down --state "$D/st.json" >/dev/null 2>&1; rm -rf "$D"' EXIT
field() { python3 -c "import json;print(json.load(open('$D/st.json'))['nodes'][$1]['$2'])"; }

row() { # NAME WANT_PATH NAT_FLAGS...
    local name=$1 want=$2
    shift 2
    "$L" testnet up --netns --nodes 3 --relay node-0 "$@" --latency "$LAT" \
        --model "$M" --threads 1 --detach --state "$D/st.json" >"$D/up.log" 2>&1 ||
        { echo "$name: testnet up failed"; tail -5 "$D/up.log"; return; }
    python3 - "$(field 0 api)" "$(field 1 api)" "$(field 2 peer_id)" "$want" "$name" \
        "$REQS" "$TOKENS" "$LAT" <<'EOF'
import json, statistics, sys, time, urllib.request
entry, api1, peer2, want, name, reqs, tokens, lat = sys.argv[1:]
def path():
    s = json.load(urllib.request.urlopen(api1 + "/status", timeout=5))
    return next((p.get("path") for p in s["peers"] if p["peer_id"] == peer2), None)
deadline = time.time() + 90
while path() != want:
    if time.time() > deadline:
        sys.exit(f"{name}: node-1 -> node-2 is {path()}, not {want}, after 90 s")
    time.sleep(1)
body = json.dumps({"prompt": "Once upon a time, in a lighthouse by the sea,",
                   "max_tokens": int(tokens), "temperature": 0, "stream": True}).encode()
per = []
for _ in range(int(reqs)):
    req = urllib.request.Request(entry + "/v1/completions", body,
                                 {"content-type": "application/json"})
    stamps = []
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            if line.startswith(b"data: {"):
                stamps.append(time.perf_counter())
    per.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
print(f"{name:8} node-1->node-2 {want:13} latency {lat}: "
      f"{1000 * statistics.median(per):.1f} ms/token (median of {reqs}: "
      + ", ".join(f"{1000 * p:.1f}" for p in per) + ")")
EOF
    "$L" testnet down --state "$D/st.json" >/dev/null 2>&1
}

row public direct
row punched hole-punched --nat node-1=cone,node-2=cone
row relayed relayed --nat node-1=symmetric,node-2=symmetric
