#!/usr/bin/env python3
"""Talk to a lamina node with the official OpenAI Python client.

    pip install openai
    python examples/python/openai_chat.py http://127.0.0.1:8080/v1 [--prompt TEXT] [--max-tokens N]

Asks the same question twice, whole and streamed, greedily (temperature 0), and prints
one JSON object: {"model", "text", "finish_reason", "usage", "stream_text",
"stream_finish_reason", "stream_usage"}. The base URL is the node's `--api` address with
`/v1`. A node started with `--api-keys` wants one of its keys (`--api-key`, or
OPENAI_API_KEY); without, lamina needs none, but the client insists on one.
"""

import argparse
import json
import os

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base_url", help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--system", default=None)
    ap.add_argument("--max-tokens", type=int, default=20)
    ap.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY", "lamina"),
        help="a key of the node's --api-keys file (default: $OPENAI_API_KEY)",
    )
    ap.add_argument(
        "--activation-dtype",
        default=None,
        help="lamina extension: f32 for activations bit-exact with one process",
    )
    args = ap.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})

    extra = {"activation_dtype": args.activation_dtype} if args.activation_dtype else None
    whole = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=args.max_tokens,
        temperature=0,
        extra_body=extra,
    )
    pieces = []
    stream_finish = None
    stream_usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=args.max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    for chunk in stream:
        if chunk.usage is not None:
            stream_usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason is not None:
                stream_finish = choice.finish_reason

    print(
        json.dumps(
            {
                "model": model,
                "text": whole.choices[0].message.content,
                "finish_reason": whole.choices[0].finish_reason,
                "usage": whole.usage.model_dump() if whole.usage else None,
                "stream_text": "".join(pieces),
                "stream_finish_reason": stream_finish,
                "stream_usage": stream_usage,
            }
        )
    )


if __name__ == "__main__":
    main()
