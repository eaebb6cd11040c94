"""sbatch scripts, for the two things llmjax submits to SLURM: one multi-process training job
(`llmjax-launch --cluster slurm`) and a sweep's array job (`llmjax-sweep --cluster slurm`)."""

from __future__ import annotations


def sbatch_script(directives: list[tuple[str, object]], body: list[str]) -> str:
    """`#SBATCH --name=value` for every directive whose value is set (None, 0 and "" are left
    out, so optional settings need no branches), then `set -euo pipefail` and the body."""
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH --{name}={value}" for name, value in directives if value not in (None, 0, "")]
    return "\n".join(lines + ["set -euo pipefail", *body]) + "\n"
