#!/bin/bash
# Issue 16: a 4000-token prompt with f32 activations through a 3-node chain (chunked prefill).
# Usage: LAMINA=target/release/lamina MODEL=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf benches/scripts/long_prompt.sh
# Three nodes (0..10, 10..20, 20..30), a prompt of about 4190 tokens, f32 activations, 8 greedy
# tokens through the chain and in one process; prints both token lists and timings.
set -u
L=${LAMINA:-target/release/lamina}
M=${MODEL:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}
L=$(realpath $L); M=$(realpath $M)
W=$(mktemp -d); cd $W
pids=()
i=0
for r in 0..10 10..20 20..30; do
  i=$((i+1))
  $L node --open --model $M --layers $r --listen 127.0.0.1:0 --data-dir n$i --ready-file ready$i.json > n$i.log 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do for t in $(seq 1 120); do [ -s ready$i.json ] && break; sleep 1; done; done
python3 - <<'PY'
import json
hops=[]
for i in (1,2,3):
    r=json.load(open(f"ready{i}.json"))
    hops.append({"layers":r["layers"],"addr":r["listen"],"peer_id":r["peer_id"]})
json.dump(hops,open("chain.json","w"))
PY
PROMPT=$(python3 -c "
s='The quick brown fox jumps over the lazy dog while the river keeps flowing past the old mill. '
print((s*400)[:20500])")
/usr/bin/time -v $L generate --chain chain.json --model $M --activation-dtype f32 --max-tokens 8 --format json "$PROMPT" > chain.out 2> chain.err
echo "chain rc=$?"
$L generate --model $M --max-tokens 8 --format json "$PROMPT" > local.out 2> local.err
echo "local rc=$?"
kill ${pids[@]}; wait
python3 - <<'PY'
import json
a=json.load(open("chain.out")); b=json.load(open("local.out"))
print("prompt tokens", len(a["prompt_token_ids"]), "chain", a["generated_token_ids"], "local", b["generated_token_ids"], "equal", a["generated_token_ids"]==b["generated_token_ids"])
print("chain timings", a["timings"]); print("local timings", b["timings"])
PY
