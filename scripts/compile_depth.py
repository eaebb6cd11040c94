"""Compile time against depth: the bench36m train step at 4 and 32 layers, scanned (the
default) and, for contrast, unrolled. Scanning compiles one block whatever the depth, so the
two scanned times should be within 1.5x of each other.

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
    for scan in (True,) if args.no_unrolled else (True, False):
        seconds = []
        for layers in args.depths:
            config = benchmark.benchmark_config("bench36m", {"model.num_layers": layers,
                                                             "model.scan_layers": scan})
            seconds.append(benchmark.compile_train_step(config)[-1])
            print(f"{'scanned' if scan else 'unrolled'} {layers:>3} layers: compiled in "
                  f"{seconds[-1]:.1f}s", flush=True)
        print(f"{'scanned' if scan else 'unrolled'}: {args.depths[1]} vs {args.depths[0]} layers "
              f"compile-time ratio {seconds[1] / seconds[0]:.2f}", flush=True)


if __name__ == "__main__":
    cpu_runtime.configure()  # As every llmjax command does, before JAX starts.
    main()
