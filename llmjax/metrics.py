"""Where a run's numbers go: JSON lines (for scripts and reports) and TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsWriter:
    """Only one process of a multi-host run writes; the others get a writer that drops."""

    def __init__(self, workdir: Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
            self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        for name, value in values.items():
            self._tensorboard.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()
