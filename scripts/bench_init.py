"""Start-up: compiling and running the train state's initialiser (`create_train_state`) with
XLA's default options and with `cpu_runtime.for_one_call`'s (LLVM -O2 on the CPU), each
compiled afresh, in alternated rounds, and whether the two give the same parameter bits.

    python scripts/bench_init.py [--presets 5m t5-tiny] [--rounds 2]

`5m` is configs/default.py's model and optimizer.

One device; the figures are wall seconds of this process, printed per round.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmjax import cpu_runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["5m", "t5-tiny"], help="llmjax.presets names.")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import jax  # noqa: PLC0415 - after configure().
    import numpy as np  # noqa: PLC0415

    from llmjax.presets import compose  # noqa: PLC0415
    from llmjax.run import bootstrap  # noqa: PLC0415
    from llmjax.train.state import fresh_state  # noqa: PLC0415

    options = {"XLA default": None, "for_one_call": cpu_runtime.for_one_call()}
    for preset in args.presets:
        config = compose(preset)
        run = bootstrap(config, devices=jax.devices()[:1])
        shardings = jax.tree.map(lambda x: x.sharding, run.state)
        states = {}
        for round_ in range(args.rounds):
            for name, compiler_options in options.items():
                init = jax.jit(functools.partial(fresh_state, config=config, tx=run.tx), out_shardings=shardings,
                               compiler_options=compiler_options)
                start = time.perf_counter()
                compiled = init.lower(jax.random.key(config.seed)).compile()
                compiled_at = time.perf_counter()
                states[name] = jax.block_until_ready(compiled(jax.random.key(config.seed)))
                print(f"{preset} round {round_ + 1} {name:>12}: compile {compiled_at - start:5.2f} s, "
                      f"run {time.perf_counter() - compiled_at:5.2f} s", flush=True)
        leaves = [jax.tree.leaves(jax.tree.map(np.asarray, state)) for state in states.values()]
        differing = sum(a.tobytes() != b.tobytes() for a, b in zip(*leaves))
        print(f"{preset}: {differing} of {len(leaves[0])} state arrays differ in their bits", flush=True)


if __name__ == "__main__":
    cpu_runtime.configure()  # As every llmjax command does, before JAX starts.
    main()
