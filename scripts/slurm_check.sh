#!/usr/bin/env bash
# End-to-end check of the SLURM launch path on a real (single-machine) SLURM cluster:
# `llmjax-launch --cluster slurm` submits a 4-process job (2 nodes x 2 tasks, 2 fake CPU
# devices each); its per-step losses must equal a single-process 8-device run's.
#   bash scripts/slurm_check.sh            (needs root; installs, starts and stops the cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/llmjax-slurm.XXXXXX")
export LLMJAX_CACHE="$work/cache" JAX_PLATFORMS=cpu
common=(--config=configs/tiny.py --config.model.dtype=float32 --config.train.steps=12
        --config.train.log_every=1)

bash scripts/slurm_cluster.sh install
bash scripts/slurm_cluster.sh start
trap 'bash scripts/slurm_cluster.sh stop' EXIT

XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  .venv/bin/llmjax-train "${common[@]}" --workdir="$work/reference" > "$work/reference.log" 2>&1 \
  || { tail -n 30 "$work/reference.log"; exit 1; }

submitted=$(XLA_FLAGS=--xla_force_host_platform_device_count=2 .venv/bin/llmjax-launch \
  "${common[@]}" --workdir="$work/slurm" --cluster=slurm --nodes=2 --tasks_per_node=2 --time=00:10:00)
echo "slurm check: $submitted"
job=${submitted##* }
for _ in $(seq 1 600); do squeue -h -j "$job" 2>/dev/null | grep -q . || break; sleep 0.5; done
state=$(scontrol show job -o "$job" | grep -o 'JobState=[A-Z]*\|ExitCode=[0-9:]*' | tr '\n' ' ' || true)
echo "slurm check: job $job: $state"
grep -v '^\[Gloo\]' "$work/slurm/slurm-$job.out" | grep -E '^(mesh|data|step .*loss|done|error)' || true
[[ $state == "JobState=COMPLETED ExitCode=0:0 " ]] || { tail -n 40 "$work/slurm/slurm-$job.out"; exit 1; }

.venv/bin/python - "$work" <<'PY'
import json, sys
import numpy as np
work = sys.argv[1]
def losses(run):
    rows = [json.loads(l) for l in open(f"{work}/{run}/metrics.jsonl")]
    return [r["loss"] for r in rows if r["split"] == "train"]
ref, got = losses("reference"), losses("slurm")
out = open(f"{work}/slurm/" + next(f for f in __import__("os").listdir(f"{work}/slurm") if f.startswith("slurm-"))).read()
assert "over 8 cpu devices" in out and "data: process 3 of 4 reads rows 6..7" in out, out[-2000:]
assert len(got) == len(ref) == 12, (len(got), len(ref))
np.testing.assert_allclose(got, ref, rtol=1e-5)
print(f"slurm check: 4-process SLURM job matches the 1-process run over {len(ref)} steps "
      f"(max rel diff {max(abs(a - b) / abs(b) for a, b in zip(got, ref)):.1e})")
PY
rm -rf "$work"
