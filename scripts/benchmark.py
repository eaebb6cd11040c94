"""Benchmarks llmjax's train step on named configs and prints one line of figures per config.

    python scripts/benchmark.py bench36m [5m ...] [--steps 10] [--warmup 3] [--out results.json]
        [--set model.attention_impl=xla ...] [--variant NAME:KEY=VALUE[,KEY=VALUE] ...]

Per config: median step time after warm-up, tokens/s, TFLOP/s per device, MFU against this
host's peak (data sheet on accelerators; on CPU the bf16 matmul peak measured and cached by
llmjax.flops) and, load-proof, against a 2048^3 bf16 matmul timed between the steps,
lower+compile time, and the compiled step's peak memory. --out writes all
figures (with every step's time) as JSON for comparisons.

With --variant, each config is compiled once as given and once per variant, all in this
process, and they take steps in turns; besides each one's figures it prints the median over
rounds of (base step time / variant step time): the speed-up of the variant, measured so that
the load of other processes on a shared host falls on both alike.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmjax import benchmark, cpu_runtime, flops  # noqa: E402
from llmjax.data.dataset import default_cache_dir  # noqa: E402


def parse_set(values: list[str]) -> dict:
    """["model.remat=full", "train.microbatches=2"] -> {"model.remat": "full", ...}."""
    overrides = {}
    for item in values:
        key, _, text = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(benchmark.BENCHMARKS))
    parser.add_argument("--steps", type=int, default=10, help="Timed steps (median reported).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Config override, e.g. model.attention_impl=xla (repeatable).")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="Also run this variant, alternating steps with the base (repeatable).")
    parser.add_argument("--out", help="Write the figures as JSON to this file.")
    args = parser.parse_args()
    cpu_runtime.configure()  # As every llmjax command does, before JAX starts.

    overrides = parse_set(args.set)
    peak, source = flops.host_peak_flops(default_cache_dir(), "bfloat16")
    print(f"peak: {peak / 1e12:.3f} TFLOP/s ({source})", flush=True)
    variants = {"base": {}} | {name: parse_set(sets.split(","))
                               for name, _, sets in (v.partition(":") for v in args.variant)}
    results = {}
    for name in args.names:
        configs = {variant: benchmark.benchmark_config(name, overrides | extra)
                   for variant, extra in variants.items()}
        runners = benchmark.alternate(configs, steps=args.steps, warmup=args.warmup)
        probe = runners.pop("matmul_probe")
        for variant, runner in runners.items():
            r = benchmark.figures(configs[variant], runner, peak, probe)
            label = name if variant == "base" else f"{name}/{variant}"
            results[label] = r | {"overrides": overrides | variants[variant], "peak_flops": peak}
            print(f"{label}: {r['params'] / 1e6:.1f}M params | step {r['step_seconds'] * 1e3:.0f} ms "
                  f"(median of {args.steps}) | {r['tokens_per_sec']:,.0f} tok/s | "
                  f"{r['tflops_per_device']:.3f} TFLOP/s/device | MFU {100 * r['mfu']:.1f}% "
                  f"({100 * r['mfu_vs_round_peak']:.1f}% of the matmul probe's speed in the same "
                  f"rounds) | "
                  f"compile {r['compile_seconds']:.1f}s | peak memory "
                  f"{r['peak_memory_bytes'] / 2**20:,.0f} MiB", flush=True)
            if variant != "base":
                speedup = statistics.median(
                    b / v for b, v in zip(runners["base"].times, runner.times))
                results[label]["speedup_vs_base"] = speedup
                print(f"{label}: {speedup:.3f}x the base's speed (median of per-round ratios)",
                      flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
