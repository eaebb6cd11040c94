"""Generation speed: llmjax-sample's path against transformers' `generate`, runs alternated.

    .venv/bin/python scripts/bench_generate.py --torch-python .venv-ref/bin/python \
        [--rounds 3] [--batches 1,16] [--prompt 128] [--new 256] [--dtypes float32,bfloat16] [--grow_cache]

A bench36m-shaped Llama (the preset `bench36m`: 8 layers, d_model 512, 8 heads, vocab 8192) is
trained for one step on the default corpus and exported to Hugging Face's format, so both sides
run the same weights. Each round runs, per dtype, one llmjax process (this script with
--worker: `llmjax.sample.generate.generate`, what llmjax-sample calls) and one transformers
process (scripts/reference_torch_generate.py), each timing every batch size on the same random
prompts: greedy, KV cache on both sides, exactly --new tokens per row. Prefill is the time to
produce the first token; decode tokens/s are the other --new - 1 tokens of every row over the
time a whole generation takes beyond it (medians of --repeats timings in a process, then of the
rounds). The llmjax worker also generates from prompts of three lengths within one bucket
and reports how many compilations they caused (0 is the target: prompts are padded to buckets),
and the time its first call took beyond a compiled one (compilation). With --grow_cache each
round runs a second llmjax process with the growing cache (`llmjax-sample --grow_cache`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """from llmjax.presets import compose


def get_config():
    return compose("bench36m", overrides={"train.steps": 1, "optimizer.warmup_steps": 0, "train.eval_every": 0,
                                          "train.global_batch_size": 2, "data.seq_len": 128})
"""


def make_model(tmp: Path) -> tuple[Path, Path]:
    """(the llmjax run, its Hugging Face export)."""
    (tmp / "bench_generate_config.py").write_text(CONFIG)
    train = [str(ROOT / ".venv" / "bin" / "llmjax-train"), f"--config={tmp / 'bench_generate_config.py'}",
             f"--workdir={tmp / 'run'}"]
    done = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"error: training the model failed:\n{done.stderr[-3000:]}")
    from llmjax.interop.export import export_hf  # noqa: PLC0415

    export_hf(tmp / "run", tmp / "hf", dtype="float32", log=lambda *_: None)
    return tmp / "run", tmp / "hf"


def prompts_of(batch: int, length: int, vocab: int) -> list[list[int]]:
    """The reference's prompts exactly (numpy seed 0)."""
    return np.random.default_rng(0).integers(1, vocab, (batch, length)).tolist()


def worker(args) -> dict:
    """llmjax's side, in this process: figures per batch size."""
    from llmjax import cpu_runtime  # noqa: PLC0415

    cpu_runtime.configure()  # As llmjax-sample does, before JAX starts.
    from llmjax.config import apply_overrides  # noqa: PLC0415
    from llmjax.evaluation.loading import load_run  # noqa: PLC0415
    from llmjax.sample import generate as generation  # noqa: PLC0415
    from llmjax.sample.search import Settings  # noqa: PLC0415
    from llmjax.sample.select import Sampling  # noqa: PLC0415

    loaded = load_run(args.worker)
    config = apply_overrides(loaded.config, {"model.dtype": args.dtype})

    def timed(prompts, new: int) -> float:
        settings = Settings(max_new_tokens=new, sampling=Sampling(temperature=0.0), grow_cache=args.grow_cache)
        start = time.perf_counter()
        with loaded.run.context():
            generation.generate(loaded.params, config, prompts, settings, eos_ids=(), pad_id=0)
        return time.perf_counter() - start

    results = {}
    for batch in args.batches:
        prompts = prompts_of(batch, args.prompt, config.model.vocab_size)
        timed(prompts, 1)
        first = timed(prompts, args.new)  # Compiles the loop.
        prefill = statistics.median(timed(prompts, 1) for _ in range(args.repeats))
        total = statistics.median(timed(prompts, args.new) for _ in range(args.repeats))
        before = generation.compilations()
        for length in (args.prompt - 27, args.prompt - 11, args.prompt):
            timed([p[:length] for p in prompts], args.new)
        results[str(batch)] = {"prefill_s": prefill, "total_s": total,
                               "prefill_tokens_per_s": batch * args.prompt / prefill,
                               "decode_tokens_per_s": batch * (args.new - 1) / max(total - prefill, 1e-9),
                               "recompilations": generation.compilations() - before,
                               "compile_s": first - total}
    return results


def run_json(command: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        done = subprocess.run([*command, "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
        if done.returncode or not out.exists():
            sys.exit(f"error: {' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch-python", help="Python with torch and transformers (.venv-ref/bin/python).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 16])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)  # A worker's.
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grow_cache", action="store_true", help="Also time llmjax with a growing cache.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # A run directory: be llmjax's side.
    parser.add_argument("--json", help="Write the figures as JSON here.")
    args = parser.parse_args()
    if args.worker:
        Path(args.json).write_text(json.dumps(worker(args)))
        return
    common = ["--prompt", str(args.prompt), "--new", str(args.new), "--repeats", str(args.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, hf_dir = make_model(Path(tmp))
        figures: dict = {}  # (side, dtype, batch) -> [per-round dicts]
        for round_ in range(args.rounds):
            for dtype in args.dtypes:
                load = os.getloadavg()[0]
                for side, extra in (("llmjax", []), *((("llmjax+grow", ["--grow_cache"]),) if args.grow_cache else ())):
                    ours = run_json([sys.executable, __file__, "--worker", str(run_dir), "--dtype", dtype,
                                     "--batches", ",".join(map(str, args.batches)), *common, *extra])
                    for batch in args.batches:
                        figures.setdefault((side, dtype, batch), []).append(ours[str(batch)])
                if args.torch_python:
                    for batch in args.batches:
                        theirs = run_json([args.torch_python, str(ROOT / "scripts" / "reference_torch_generate.py"),
                                           "--model", str(hf_dir), "--batch", str(batch), "--dtype", dtype, *common])
                        figures.setdefault(("transformers", dtype, batch), []).append(theirs)
                print(f"round {round_ + 1}/{args.rounds} {dtype} done (load before: {load:.1f})", flush=True)
    print(f"\nprompt {args.prompt}, {args.new} new tokens, greedy, KV cache; medians of {args.rounds} rounds")
    print(f"{'dtype':9} {'batch':>5} {'entry':13} {'prefill tok/s':>14} {'decode tok/s':>13} "
          f"{'decode per round':>26} {'/transformers':>13} {'compile s':>10}")
    table = []
    for dtype in args.dtypes:
        for batch in args.batches:
            reference = figures.get(("transformers", dtype, batch))
            theirs = statistics.median(r["decode_tokens_per_s"] for r in reference) if reference else None
            for side in ("llmjax", "llmjax+grow", "transformers"):
                rounds = figures.get((side, dtype, batch))
                if not rounds:
                    continue
                decode = statistics.median(r["decode_tokens_per_s"] for r in rounds)
                prefill = statistics.median(r["prefill_tokens_per_s"] for r in rounds)
                per_round = ", ".join(f"{r['decode_tokens_per_s']:,.0f}" for r in rounds)
                compile_s = (f"{statistics.median(r['compile_s'] for r in rounds):.1f}"
                             if side != "transformers" else "-")
                print(f"{dtype:9} {batch:>5} {side:13} {prefill:>14,.0f} {decode:>13,.0f} {per_round:>26} "
                      f"{f'{decode / theirs:.2f}x' if theirs else '-':>13} {compile_s:>10}")
                table.append({"dtype": dtype, "batch": batch, "entry": side, "prefill_tokens_per_s": prefill,
                              "decode_tokens_per_s": decode, "rounds": rounds})
    recompiles = {f"{d}/{b}": [r["recompilations"] for r in figures[("llmjax", d, b)]]
                  for d in args.dtypes for b in args.batches}
    print(f"llmjax compilations for prompts of {args.prompt - 27}, {args.prompt - 11} and {args.prompt} tokens "
          f"after the first: {recompiles}")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "recompilations": recompiles}, indent=1))


if __name__ == "__main__":
    main()
