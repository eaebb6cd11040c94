"""Runs MaxText's own pretraining trainer at the bench36m shape on synthetic data; prints tokens/s.

    scripts/setup_maxtext_env.sh        # once: .venv-maxtext with maxtext==0.2.5
    python scripts/bench_maxtext.py [--steps 10] [--warmup 3] [--dtype bfloat16] [--json out.json]

The settings mirror llmjax's bench36m (llmjax/benchmark.py): vocab 8192, d_model 512, 8
layers, 8 query and 8 key/value heads of 64, SwiGLU 1536, untied output projection, sequence
512, global batch 8 (one CPU device), bf16 compute with fp32 weights, AdamW (b2 0.95, weight
decay 0.1, clipping 1.0), scanned layers, no rematerialisation, no dropout. MaxText prints a
"completed step: N, seconds: S" line per step; the median of S after the warm-up steps gives
tokens/s. This script itself needs only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-maxtext" / "bin" / "python"
BATCH, SEQ = 8, 512
STEP_LINE = re.compile(r"completed step: (\d+), seconds: ([0-9.]+)")


def maxtext_args(steps: int, dtype: str, output_dir: str) -> list[str]:
    return ["run_name=bench36m", f"base_output_directory={output_dir}", "hardware=cpu",
            "dataset_type=synthetic", f"steps={steps}", f"per_device_batch_size={BATCH}",
            f"max_target_length={SEQ}", "vocab_size=8192", "base_emb_dim=512",
            "base_num_query_heads=8", "base_num_kv_heads=8", "head_dim=64", "base_mlp_dim=1536",
            "base_num_decoder_layers=8", "decoder_block=llama2", "logits_via_embedding=false",
            f"dtype={dtype}", "weight_dtype=float32", "remat_policy=none", "scan_layers=true",
            "attention=dot_product", "opt_type=adamw", "adam_b2=0.95", "adam_weight_decay=0.1",
            "gradient_clipping_threshold=1.0", "learning_rate=3e-4", "enable_dropout=false",
            "enable_checkpointing=false", "enable_tensorboard=false", "enable_goodput_recording=false",
            "monitor_goodput=false", "log_period=1000", "skip_jax_distributed_system=true"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="Timed steps (median reported).")
    parser.add_argument("--warmup", type=int, default=3, help="Steps excluded from the median.")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    if not PYTHON.exists():
        sys.exit(f"error: {PYTHON} is missing; run scripts/setup_maxtext_env.sh first.")
    find_base_yml = ("import maxtext, os; "
                     "print(os.path.join(os.path.dirname(maxtext.__file__), 'configs', 'base.yml'))")
    base_yml = subprocess.run([PYTHON, "-c", find_base_yml], capture_output=True, text=True,
                              check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as output_dir:
        command = [PYTHON, "-m", "maxtext.trainers.pre_train.train", base_yml,
                   *maxtext_args(args.warmup + args.steps, args.dtype, output_dir)]
        env = dict(os.environ, DECOUPLE_GCLOUD="TRUE", JAX_PLATFORMS="cpu")
        run = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = {int(step): float(s) for step, s in STEP_LINE.findall(run.stdout + run.stderr)}
    timed = [s for step, s in sorted(seconds.items()) if step >= args.warmup]
    if run.returncode or not timed:
        sys.exit(f"error: MaxText exited with {run.returncode} after {len(seconds)} steps:\n"
                 + (run.stdout + run.stderr)[-4000:])
    median = statistics.median(timed)
    result = {"name": f"maxtext {args.dtype}", "step_seconds": median, "step_seconds_all": timed,
              "tokens_per_sec": BATCH * SEQ / median}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
