"""transformers' `generate` timed as scripts/bench_generate.py times llmjax's: the reference
side, run under .venv-ref's Python (torch + transformers) by bench_generate.py.

    .venv-ref/bin/python scripts/reference_torch_generate.py --model HF_DIR --batch 16 --prompt 128 \
        --new 256 --dtype bfloat16 --json out.json

Greedy decoding with the KV cache (`use_cache=True`, the default), exactly --new tokens per row
(`min_new_tokens`, so an end-of-text token stops no row early), the prompts the same random
tokens as llmjax's (numpy seed 0). Prefill time is that of generating one token; decode
tokens/s divide the remaining new tokens by the time a full generation takes beyond it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def timed(model, prompts, new: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=new,
                       min_new_tokens=new, pad_token_id=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    vocab = model.config.vocab_size
    prompts = torch.from_numpy(np.random.default_rng(0).integers(1, vocab, (args.batch, args.prompt))).long()
    timed(model, prompts, 2)  # Warm-up: allocator, kernels.
    prefill = statistics.median(timed(model, prompts, 1) for _ in range(args.repeats))
    total = statistics.median(timed(model, prompts, args.new) for _ in range(args.repeats))
    result = {"prefill_s": prefill, "total_s": total,
              "prefill_tokens_per_s": args.batch * args.prompt / prefill,
              "decode_tokens_per_s": args.batch * (args.new - 1) / max(total - prefill, 1e-9),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    with open(args.json, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
