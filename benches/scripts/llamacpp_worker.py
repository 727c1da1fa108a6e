"""llama.cpp's side of `lamina-bench compare`: one measured run, one JSON line on stdout.

Same protocol as the Rust workers (benches/src/worker.rs): load; untimed warm-up (prefill
and a few decode steps, then reset); timed prefill of the given prompt ids in one
`llm.eval`; then GEN greedy decode steps of one token each, each step (eval + argmax)
timed on its own. The top-2 logit margin of every step is reported, untimed.

With `logits_all=False`, llama-cpp-python 0.3.x no longer copies logits into `llm.scores`
(nor `llm.eval_logits`) after `eval`; the last row is read straight from the context
(`llama_get_logits`, the row the batch asked logits for), without a copy.

usage: python llamacpp_worker.py --model F --threads N --ids 1,2,3 --gen 64 [--no-warmup]
"""
import argparse
import json
import resource
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama

WARMUP_DECODE_STEPS = 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--ids", required=True, help="comma-separated prompt token ids")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--no-warmup", action="store_true")
    a = ap.parse_args()
    ids = [int(x) for x in a.ids.split(",") if x.strip()]
    p, g = len(ids), a.gen

    t = time.perf_counter()
    llm = Llama(
        model_path=a.model,
        n_ctx=p + g + 8,
        n_batch=max(p, 512),
        n_ubatch=max(p, 512),
        n_threads=a.threads,
        n_threads_batch=a.threads,
        logits_all=False,
        verbose=False,
    )
    load_s = time.perf_counter() - t
    n_vocab = llm.n_vocab()

    def last_row():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def margin(row):
        top2 = np.partition(row, -2)[-2:]
        return float(top2[1] - top2[0])

    def run(gen):
        """Each step (eval + argmax) is timed on its own; the margin is not timed."""
        llm.reset()
        tokens, margins = [], []
        t0 = time.perf_counter()
        llm.eval(ids)
        tok = int(np.argmax(last_row()))
        prefill = time.perf_counter() - t0
        tokens.append(tok)
        margins.append(margin(last_row()))
        decode = 0.0
        for _ in range(gen):
            t = time.perf_counter()
            llm.eval([tok])
            tok = int(np.argmax(last_row()))
            decode += time.perf_counter() - t
            tokens.append(tok)
            margins.append(margin(last_row()))
        return prefill, decode, tokens, margins

    if not a.no_warmup:
        run(min(WARMUP_DECODE_STEPS, g))
    prefill, decode, tokens, margins = run(g)
    print(
        json.dumps(
            {
                "impl": "llama.cpp",
                "threads": a.threads,
                "prompt_tokens": p,
                "gen_tokens": g,
                "load_s": load_s,
                "prefill_s": prefill,
                "decode_s": decode,
                "prefill_tok_s": p / prefill,
                "decode_tok_s": g / decode if g else 0.0,
                "tokens": tokens,
                "margins": margins,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                "info": "llama-cpp-python %s; %s"
                % (llama_cpp.__version__, llama_cpp.llama_print_system_info().decode().strip()),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
