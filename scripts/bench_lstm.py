"""llmjax's LSTM against torch.nn.LSTM of the same shape, runs alternated.

    python scripts/bench_lstm.py [--rounds 3] [--steps 6] [--torch-python .venv-ref/bin/python]
        [--out bench_lstm.json]

Two shapes at the default corpus's scale (batch 16 x 256 tokens, vocabulary 8192): `lstm-5m`
(2 layers of 672 cells projected to 256) and the same without a projection (2 layers of 256
cells, the path torch runs through oneDNN), each in bf16 (torch: CPU autocast) and fp32. Each
round runs every entry once as its own process, in turn, so the load of other processes falls
on all alike; the table gives median tokens/s over rounds, MFU by llmjax's LSTM FLOPs formula
(llmjax/model/lstm/flops.py) against this host's bf16 matmul peak, and llmjax / torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmjax import benchmark, flops  # noqa: E402
from llmjax.data.dataset import default_cache_dir  # noqa: E402
from compare import run_once  # noqa: E402 - this script's folder is on sys.path.

SHAPES = {"lstm-5m": {}, "no projection": {"model.hidden_dim": 256, "model.proj_dim": 0}}


def commands(shape: dict, dtype: str, args) -> tuple[list[str], list[str]]:
    """(llmjax command, torch command), each writing its figures as JSON to the path appended."""
    config = benchmark.benchmark_config("lstm-5m", shape | {"model.dtype": dtype})
    m, steps = config.model, ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    sets = [f"--set={key}={value}" for key, value in (shape | {"model.dtype": dtype}).items()]
    ours = [sys.executable, "scripts/benchmark.py", "lstm-5m", *steps, *sets, "--out"]
    theirs = [args.torch_python, "scripts/reference_torch_lstm.py", *steps, "--dtype", dtype,
              "--vocab", str(m.vocab_size), "--d_model", str(m.d_model), "--hidden", str(m.hidden_dim),
              "--proj", str(m.proj_dim), "--layers", str(m.num_layers),
              "--batch", str(config.train.global_batch_size), "--seq", str(config.data.seq_len), "--json"]
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--torch-python", default=str(ROOT / ".venv-ref" / "bin" / "python"))
    parser.add_argument("--out", help="Write every run's figures as JSON to this file.")
    args = parser.parse_args()
    if not Path(args.torch_python).exists():
        sys.exit(f"error: {args.torch_python} does not exist; run scripts/setup_reference_env.sh "
                 f"or give --torch-python.")
    peak, source = flops.host_peak_flops(default_cache_dir(), "bfloat16")
    entries = {}
    for shape_name, shape in SHAPES.items():
        for dtype in ("bfloat16", "float32"):
            ours, theirs = commands(shape, dtype, args)
            config = benchmark.benchmark_config("lstm-5m", shape | {"model.dtype": dtype})
            per_token = flops.flops_per_token(config)
            entries[(shape_name, dtype)] = {"llmjax": ours, "torch": theirs, "per_token": per_token}
    runs = {key: {"llmjax": [], "torch": []} for key in entries}
    for round_index in range(args.rounds):
        for key, entry in entries.items():
            for side in ("llmjax", "torch"):
                result = run_once(entry[side], "lstm-5m")
                runs[key][side].append(result["tokens_per_sec"])
                print(f"round {round_index + 1}/{args.rounds} {key[0]} {key[1]} {side}: "
                      f"{result['tokens_per_sec']:,.0f} tok/s", flush=True)
    print(f"\nLSTM train step, batch 16 x 256, {args.rounds} alternated rounds of {args.steps} timed steps; "
          f"peak {peak / 1e12:.3f} TFLOP/s ({source})")
    print("| shape | dtype | llmjax tok/s | torch tok/s | llmjax MFU | llmjax / torch |")
    print("|---|---|---|---|---|---|")
    table = {}
    for key, entry in entries.items():
        ours, theirs = (statistics.median(runs[key][side]) for side in ("llmjax", "torch"))
        table[f"{key[0]} {key[1]}"] = {"llmjax": ours, "torch": theirs}
        print(f"| {key[0]} | {key[1]} | {ours:,.0f} | {theirs:,.0f} | {100 * ours * entry['per_token'] / peak:.1f}% "
              f"| {ours / theirs:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"peak_flops": peak, "medians": table,
                                              "runs": {f"{k[0]} {k[1]}": v for k, v in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
