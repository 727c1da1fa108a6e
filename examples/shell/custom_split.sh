#!/usr/bin/env bash
# A custom split by hand: three nodes with the layers you choose (the first bootstraps the
# others), one more that hosts nothing and serves the API, a prompt through the mesh.
#   LAMINA=target/release/lamina MODEL=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf bash examples/shell/custom_split.sh
set -euo pipefail
LAMINA=${LAMINA:-target/release/lamina}
MODEL=${MODEL:-../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf}
DIR=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
node() { # name layers [more args]
  local name=$1 layers=$2; shift 2
  "$LAMINA" node --model "$MODEL" --layers "$layers" --open --data-dir "$DIR/$name" \
    --ready-file "$DIR/$name.ready" "$@" >"$DIR/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do [ -s "$DIR/$name.ready" ] && return; sleep 0.1; done
  echo "$name did not start; see $DIR/$name.log" >&2; exit 1
}
node a 0..8
BOOT=$(python3 -c 'import json,sys; print([a for a in json.load(open(sys.argv[1]))["p2p"] if "quic" in a][0])' "$DIR/a.ready")
node b 8..20 --bootstrap "$BOOT"
node c 20..30 --bootstrap "$BOOT"
node entry none --bootstrap "$BOOT" --api 127.0.0.1:0
API=http://$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$DIR/entry.ready")
for _ in $(seq 1 100); do
  "$LAMINA" status --peer "$API" | grep -q ': covered' && break; sleep 0.2
done
"$LAMINA" status --peer "$API"
"$LAMINA" generate --peer "$API" --max-tokens 24 "The lighthouse keeper"
