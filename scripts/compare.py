"""bench36m side by side: llmjax against its peers, runs alternated.

    python scripts/compare.py [--rounds 3] [--steps 10] [--torch-python .venv-ref/bin/python]
        [--maxtext] [--out compare.json]

On a shared machine absolute speeds drift with the load of other processes, so each round runs
every entry once in turn (llmjax, the PyTorch reference, MaxText), and the table
gives per entry the median tokens/s over rounds, MFU against this host's measured bf16 matmul
peak, and the ratio of llmjax's median to each entry's. The 1-minute load average before each
run is recorded. Every entry is a separate process: scripts/benchmark.py,
scripts/reference_torch.py (under --torch-python) and scripts/bench_maxtext.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmjax import benchmark, flops  # noqa: E402
from llmjax.data.dataset import default_cache_dir  # noqa: E402


def entries(args) -> dict[str, list[str]]:
    """name -> command that writes its figures as JSON to the path appended last."""
    steps = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    python = sys.executable
    found = {"llmjax": [python, "scripts/benchmark.py", "bench36m", *steps, "--out"]}
    if args.torch_python:
        found["torch compiled"] = [args.torch_python, "scripts/reference_torch.py", *steps, "--json"]
    if args.maxtext:
        found["maxtext"] = [python, "scripts/bench_maxtext.py", *steps, "--json"]
    return found


def run_once(command: list[str], name: str = "bench36m") -> dict:
    """The figures a command writes as JSON to the path appended to it (benchmark.py keys
    them by config name `name`); exits with its output if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        done = subprocess.run([*command, str(out)], cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
        if done.returncode or not out.exists():
            sys.exit(f"error: {' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        result = json.loads(out.read_text())
    return result.get(name, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--torch-python", help="Python with torch (e.g. .venv-ref/bin/python).")
    parser.add_argument("--maxtext", action="store_true", help="Include MaxText (.venv-maxtext).")
    parser.add_argument("--out", help="Write every run's figures as JSON to this file.")
    args = parser.parse_args()

    peak, source = flops.host_peak_flops(default_cache_dir(), "bfloat16")
    config = benchmark.benchmark_config("bench36m")
    per_token = flops.flops_per_token(config)
    commands = entries(args)
    runs = {name: [] for name in commands}
    for round_index in range(args.rounds):
        for name, command in commands.items():
            load = os.getloadavg()[0]
            result = run_once(command) | {"load_before": load}
            runs[name].append(result)
            print(f"round {round_index + 1}/{args.rounds} {name}: "
                  f"{result['tokens_per_sec']:,.0f} tok/s (load {load:.2f})", flush=True)

    medians = {name: statistics.median(r["tokens_per_sec"] for r in rs) for name, rs in runs.items()}
    print(f"\nbench36m, {args.rounds} alternated rounds of {args.steps} timed steps; peak "
          f"{peak / 1e12:.3f} TFLOP/s ({source})")
    print(f"| {'entry':<16} | {'tokens/s (median)':>17} | {'MFU':>6} | {'llmjax / entry':>14} |")
    print(f"|{'-' * 18}|{'-' * 19}|{'-' * 8}|{'-' * 16}|")
    for name, median in medians.items():
        print(f"| {name:<16} | {median:>17,.0f} | {100 * median * per_token / peak:>5.1f}% "
              f"| {medians['llmjax'] / median:>13.2f}x |")
    probe_mfu = statistics.median(r["mfu_vs_round_peak"] for r in runs["llmjax"])
    print(f"llmjax MFU against a bf16 2048^3 matmul timed between its steps (load-proof): "
          f"{100 * probe_mfu:.1f}% (median over rounds)")
    if args.out:
        Path(args.out).write_text(json.dumps({"peak_flops": peak, "peak_source": source,
                                              "medians": medians, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
