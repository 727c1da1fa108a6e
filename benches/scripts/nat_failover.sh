#!/usr/bin/env bash
# Issue 17: a relay dies mid-generation where another route exists (root: namespaces,
# nftables). Two public relays (node-0, node-1) each serve the first half of the layers;
# two nodes behind symmetric NATs (node-2, node-3) each serve the second half and reach
# each other only through a relay. A greedy stream at node-3's API: once it runs, the
# relay its route goes through is killed; the stream must end with the text of one
# process (no spot checks: their second chains would change the route `/status` shows).
# Prints where each NATed node reserved, the route before and after, the text.
#
#   LAMINA_BIN=target/release/lamina benches/scripts/nat_failover.sh [MODEL]
set -u
L=${LAMINA_BIN:-target/release/lamina}
M=${1:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}
D=$(mktemp -d)
P="Here is a long story about a lighthouse keeper named Tom and the great storm that changed his life."
trap '"$L" testnet down --state "$D/st.json" >/dev/null 2>&1; rm -rf "$D"' EXIT
"$L" testnet up --netns --nodes 4 --redundancy 2 --relay node-0 --relay node-1 \
    --nat node-2=symmetric,node-3=symmetric --verify-rate 0 --model "$M" --threads 1 --detach \
    --state "$D/st.json" | tail -6
field() { python3 -c "import json;print(json.load(open('$D/st.json'))['nodes'][$1]['$2'])"; }
sleep "${WAIT:-20}"
for i in 2 3; do
    echo "== node-$i listens at"
    curl -s -m 5 "$(field $i api)/status" | python3 -c "
import json, sys
for a in json.load(sys.stdin)['listen'][:2]: print('  ', a[:90])"
done
echo "== one process"
WANT=$("$L" generate "$P" --model "$M" --max-tokens 300 --threads 1 2>/dev/null | head -c 100000)
echo "$WANT" | head -3
echo "== stream at node-3 (f32, greedy), the route's relay killed after 1 s"
curl -s -N -m 300 "$(field 3 api)/v1/completions" -H 'content-type: application/json' \
    -d "{\"prompt\":\"$P\",\"max_tokens\":300,\"temperature\":0,\"activation_dtype\":\"f32\",\"stream\":true}" \
    >"$D/stream.txt" &
CURL=$!
sleep 1
python3 - "$(field 3 api)" "$D/st.json" <<'EOF' >"$D/victim"
import json, sys, urllib.request
api, state = sys.argv[1:]
nodes = json.load(open(state))["nodes"]
s = json.load(urllib.request.urlopen(api + "/status", timeout=5))
hops = s["last_route"]["hops"]
print("route before:", " -> ".join(h["layers"] for h in hops), file=sys.stderr)
for h in hops:
    for n in nodes[:2]:
        if n["peer_id"] == h["peer"]:
            print(n["pid"], n["id"])
            sys.exit(0)
EOF
read -r PID ID <"$D/victim"
echo "killing $ID (a relay on the route)"
kill -9 "$PID"
sleep 0.5
echo "$ID: $(grep -s State /proc/"$PID"/status || echo gone)"
wait "$CURL"
python3 - "$D/stream.txt" "$WANT" "$P" <<'EOF'
import json, sys
text, errors = "", []
for line in open(sys.argv[1]):
    if not line.startswith("data: {"):
        continue
    v = json.loads(line[6:])
    if "error" in v:
        errors.append(v["error"])
    else:
        text += v["choices"][0]["text"]
want = sys.argv[2]
print("streamed:", len(text), "chars:", repr(text[:80]), "...", repr(text[-60:]))
print("errors:", errors)
print("same text as one process:", want.strip().endswith(text.strip()) or text.strip() in want)
EOF
echo "== node-3's log: the failover"
grep -v "probe" "$D"/st.json.d/node-3.log | tail -n 12 | cut -c1-260
echo "== route after"
curl -s -m 5 "$(field 3 api)/status" | python3 -c "
import json, sys
r = json.load(sys.stdin)['last_route']
print('  ', ' -> '.join(h['layers'] + '@' + h['peer'][-6:] for h in r.get('hops', [])) or r)"
