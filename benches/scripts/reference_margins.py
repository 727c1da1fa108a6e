"""Writes llama.cpp's top-1/top-2 logit margin at every generated position of the
SmolLM2 reference continuations in ../shared/models/reference.json.

The parity test compares lamina's greedy tokens with the reference only up to the first
position where the reference itself is nearly tied (margin < 0.3); reference.json holds
margins for the first position only, so this script recomputes them with the same tool
(llama-cpp-python 0.3.36, CPU) on the same file, and the result is committed as a fixture.

usage: python reference_margins.py MODELS_DIR OUT.json
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

models, out = sys.argv[1], sys.argv[2]
ref = json.load(open(f"{models}/reference.json"))
name = "SmolLM2-135M-Instruct.Q4_1.gguf"
llm = Llama(model_path=f"{models}/{name}", n_ctx=256, logits_all=True, verbose=False, n_threads=2)
result = {"tool": "llama-cpp-python 0.3.36", "model": name, "prompts": {}, "argmax_equal": {}}
for prompt, r in ref["models"][name]["prompts"].items():
    p, g = r["prompt_token_ids"], r["generated_token_ids"]
    llm.reset()
    llm.eval(p + g)
    logits = np.array(llm.scores[: len(p) + len(g)])
    margins, same = [], []
    for i in range(len(g)):
        row = np.sort(logits[len(p) - 1 + i])[::-1]
        margins.append(round(float(row[0] - row[1]), 5))
        same.append(int(np.argmax(logits[len(p) - 1 + i])) == g[i])
    result["prompts"][prompt] = margins
    result["argmax_equal"][prompt] = all(same)
json.dump(result, open(out, "w"), indent=1)
print(json.dumps(result["argmax_equal"]))
