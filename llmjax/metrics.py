"""Where a run's numbers go: JSON lines (for scripts and reports) and TensorBoard events."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tensorboardX import SummaryWriter


def _drop_records_after(path: Path, step: int) -> None:
    """A resumed run recomputes the steps after its checkpoint exactly; their records from the
    interrupted attempt are dropped so every step appears once."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):  # A line cut short by a crash, or garbage.
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


class MetricsWriter:
    """Only one process of a multi-host run writes; the others get a writer that drops."""

    def __init__(self, workdir: Path, enabled: bool = True, resume_step: int = 0, config=None):
        self.enabled = enabled
        self._wandb = None
        if enabled:
            path = workdir / "metrics.jsonl"
            _drop_records_after(path, resume_step)
            self._jsonl = open(path, "a", buffering=1)
            self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))
            if config is not None and config.tracking.wandb:
                import wandb  # noqa: PLC0415 - optional; validate() checked it is installed.

                # One W&B run per workdir, continued when the workdir resumes.
                run_id = hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:12]
                self._wandb = wandb.init(project=config.tracking.wandb_project, name=workdir.name,
                                         id=run_id, resume="allow", dir=str(workdir),
                                         config=config.to_dict())

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        for name, value in values.items():
            self._tensorboard.add_scalar(f"{split}/{name}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{name}": value for name, value in values.items()}, step=step)

    def close(self) -> None:
        """Idempotent, so error paths can always call it."""
        if self.enabled and not self._jsonl.closed:
            self._jsonl.close()
            self._tensorboard.close()
            if self._wandb is not None:
                self._wandb.finish()
