#!/usr/bin/env bash
# The OpenAI-compatible API with curl: a local 3-node mesh, a chat completion whole and
# streamed, the coverage map, then everything stopped.
#   LAMINA=target/release/lamina MODEL=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf bash examples/shell/curl.sh
set -euo pipefail
LAMINA=${LAMINA:-target/release/lamina}
MODEL=${MODEL:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}
STATE=$(mktemp -d)/testnet.json
trap '"$LAMINA" testnet down --state "$STATE" >/dev/null 2>&1 || true' EXIT
"$LAMINA" testnet up --detach --nodes 3 --model "$MODEL" --state "$STATE" >/dev/null
API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][0]["api"])' "$STATE")
echo "== chat completion"
curl -sf "$API/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 24, "temperature": 0}'
echo
echo "== streamed"
curl -sfN "$API/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 24, "temperature": 0, "stream": true}'
echo "== models"
curl -sf "$API/v1/models"
echo
"$LAMINA" status --peer "$API"
