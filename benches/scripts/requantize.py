#!/usr/bin/env python3
"""Requantizes a GGUF with llama.cpp's own quantizer (llama_model_quantize), e.g. the shared
SmolLM2 Q4_1 file to Q8_0, for the kernels bench.

    /path/to/venv/bin/python benches/scripts/requantize.py IN.gguf OUT.gguf q8_0

`--allow-requantize` semantics: the source is already quantized, so llama.cpp dequantizes
each tensor and quantizes it again (the same thing the issue asks for).
"""
import sys

import llama_cpp

src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3].upper()
ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = ftype
params.allow_requantize = True
params.nthread = 2
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
if rc != 0:
    sys.exit(f"llama_model_quantize failed with {rc}")
print(f"wrote {dst} ({kind})")
