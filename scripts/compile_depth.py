"""Compile time against depth: the bench36m train step at 4 and 32 layers, scanned in a loop of
one block per iteration (model.scan_unroll=1, what the default picks beyond 16 layers) and,
for contrast, unrolled (what the default's scan amounts to up to 16). The loop compiles one
block whatever the depth, so the two looped times should be within 1.5x of each other.

    python scripts/compile_depth.py [--depths 4 32] [--no-unrolled]

Nothing is cached between the compiles (each config is a different program) and no persistent
compilation cache is set here, so each figure is a full lowering + XLA compile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmjax import benchmark, cpu_runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs=2, default=[4, 32])
    parser.add_argument("--no-unrolled", action="store_true", help="Skip the unrolled contrast.")
    args = parser.parse_args()
    modes = {"looped": {"model.scan_layers": True, "model.scan_unroll": 1},
             "unrolled": {"model.scan_layers": False}}
    for mode in ("looped",) if args.no_unrolled else modes:
        seconds = []
        for layers in args.depths:
            config = benchmark.benchmark_config("bench36m", {"model.num_layers": layers} | modes[mode])
            seconds.append(benchmark.compile_train_step(config)[-1])
            print(f"{mode} {layers:>3} layers: compiled in {seconds[-1]:.1f}s", flush=True)
        print(f"{mode}: {args.depths[1]} vs {args.depths[0]} layers compile-time ratio "
              f"{seconds[1] / seconds[0]:.2f}", flush=True)


if __name__ == "__main__":
    cpu_runtime.configure()  # As every llmjax command does, before JAX starts.
    main()
