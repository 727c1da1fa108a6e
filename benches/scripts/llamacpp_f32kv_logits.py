#!/usr/bin/env python3
"""llama.cpp's first-position logits for the stories260K reference prompts, with an f32 KV
cache (`type_k = type_v = F32`, flash attention off), into a test fixture.

Why: reference.json's logits come from llama.cpp with its default f16 KV cache, which rounds
attention; the same llama-cpp-python 0.3.36 built natively here lands 1.7e-3 from those
values itself (the reference was built with GGML_NATIVE=OFF). With an f32 cache llama.cpp
computes attention exactly, which is what lamina does, so this is the fixture that can
hold lamina to a tight tolerance against an independent implementation.

    /path/to/venv/bin/python benches/scripts/llamacpp_f32kv_logits.py \
        ../shared/models > sharding/tests/fixtures/stories260k_llamacpp_f32kv_top.json
"""
import ctypes
import json
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

models = sys.argv[1] if len(sys.argv) > 1 else "../shared/models"
ref = json.load(open(f"{models}/reference.json"))
entry = next(v for k, v in ref["models"].items() if "stories" in k)
llm = Llama(f"{models}/stories260K.gguf", n_ctx=128, n_threads=2, n_batch=512,
            flash_attn=False, type_k=0, type_v=0, verbose=False)
out = {
    "tool": f"llama-cpp-python {llama_cpp.__version__}, native build, n_threads=2, "
            "type_k=type_v=F32, flash_attn=False",
    "system_info": llama_cpp.llama_print_system_info().decode().strip(),
    "prompts": {},
}
for prompt, r in entry["prompts"].items():
    ids = r["prompt_token_ids"]
    llm.reset()
    llm.eval(ids)
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)
    top = np.argsort(-logits)[:20]
    out["prompts"][prompt] = {
        "prompt_token_ids": ids,
        "top20": [{"token_id": int(t), "logit": float(logits[t])} for t in top],
    }
json.dump(out, sys.stdout, indent=1)
print()
