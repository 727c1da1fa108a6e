#!/usr/bin/env bash
# Issue 17's NAT lab (root: network namespaces and nftables): a relay (node-0), two nodes
# behind cone NATs and one behind a symmetric NAT; prints every node's view of the paths
# to its peers, answers a prompt at the symmetric node's API and compares it with one
# process, then kills the relay mid-stream and shows how the stream ends.
#
#   LAMINA_BIN=target/release/lamina benches/scripts/nat_lab.sh [MODEL]
#
# WAIT (default 40) is how long the mesh gets to punch its holes before the paths are read.
set -u
L=${LAMINA_BIN:-target/release/lamina}
M=${1:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}
D=$(mktemp -d)
P="Here is a long story about a lighthouse keeper named Tom and the great storm that changed his life."
trap '"$L" testnet down --state "$D/st.json" >/dev/null 2>&1; rm -rf "$D"' EXIT
"$L" testnet up --netns --nodes 4 --relay node-0 --nat node-1=cone,node-2=cone,node-3=symmetric \
    --model "$M" --threads 1 --detach --state "$D/st.json" | tail -5
field() { python3 -c "import json;print(json.load(open('$D/st.json'))['nodes'][$1]['$2'])"; }
sleep "${WAIT:-40}"
for i in 0 1 2 3; do
    echo "== node-$i ($(field $i peer_id | tail -c 7))"
    curl -s -m 5 "$(field $i api)/status" | python3 -c "
import json, sys
s = json.load(sys.stdin)
print('  nat_status', (s.get('nat_status') or '')[:40])
for p in s['peers']:
    if not p.get('self'):
        print('  ', p['peer_id'][-6:], p.get('layers'), p.get('path'))
"
done
echo "== prompt at node-3 (f32, greedy)"
curl -s -m 120 "$(field 3 api)/v1/completions" -H 'content-type: application/json' \
    -d "{\"prompt\":\"$P\",\"max_tokens\":32,\"temperature\":0,\"activation_dtype\":\"f32\"}" |
    python3 -c "import json,sys; print(repr(json.load(sys.stdin)['choices'][0]['text']))"
echo "== one process"
"$L" generate "$P" --model "$M" --max-tokens 32 --threads 1 2>/dev/null | tail -3
echo "== the relay (node-0) killed mid-stream"
(sleep 1; kill -9 "$(field 0 pid)") &
curl -s -N -m 120 "$(field 3 api)/v1/completions" -H 'content-type: application/json' \
    -d "{\"prompt\":\"$P\",\"max_tokens\":200,\"temperature\":0,\"stream\":true}" | tail -c 400
echo
