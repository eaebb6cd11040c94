"""The report of a sweep across model families (experiments/families.py): final loss and bits
per byte per family and size, loss against training compute per family, and the validation
loss at each position in the context (Kaplan et al. 2020, figure 7). Runs trained on another
objective than causal LM (BERT's MLM) have a table of their own: their loss is over other
targets, so it is neither plotted nor compared with the others'.

Per-position losses come from `llmjax-eval --per_position` on each finished run, written once
to the run's `per_position.json` (a subprocess, so the report itself needs no JAX and a run
evaluated before is not evaluated again).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from llmjax.rundir import saved_steps

PER_POSITION = "per_position.json"


def table(rows: list[dict]) -> str:
    """One line per causal-LM run, grouped by family, smallest first; then the runs of other
    objectives, with the accuracy of their predictions."""
    val = max([9] + [len(r["val_text"]) for r in rows])  # LOSS@STEP where not the run's last step.
    header = f"{'family':8} {'non-emb params':>14} {'params':>10} {'val loss':>{val}} {'val bpb':>8} {'tok/s':>8}  run"
    lines = [header, "-" * len(header)]
    for r in sorted(causal(rows), key=_order):
        lines.append(f"{r.get('family', '?'):8} {r.get('non_embedding_params', 0):>14,} {r.get('params', 0):>10,} "
                     f"{r['val_text']:>{val}} {r['val_bpb']:>8.4f} {r['tokens_per_sec']:>8,.0f}  {r['name']}")
    others = [r for r in rows if r not in causal(rows)]
    if others:
        header = (f"{'family':8} {'objective':10} {'non-emb params':>14} {'params':>10} {'val loss':>{val}} "
                  f"{'val acc':>8} {'tok/s':>8}  run")
        lines += ["", "other objectives (loss over their own targets: not comparable with the above)",
                  header, "-" * len(header)]
        for r in sorted(others, key=_order):
            lines.append(f"{r.get('family', '?'):8} {r.get('objective', '?'):10} {r.get('non_embedding_params', 0):>14,} "
                         f"{r.get('params', 0):>10,} {r['val_text']:>{val}} {r.get('val_accuracy', math.nan):>8.4f} "
                         f"{r['tokens_per_sec']:>8,.0f}  {r['name']}")
    return "\n".join(lines)


def causal(rows: list[dict]) -> list[dict]:
    """The runs trained on next-token prediction: those the plots compare."""
    return [r for r in rows if r.get("objective", "causal_lm") == "causal_lm"]


def _order(r: dict):
    return r.get("family", ""), r.get("non_embedding_params", 0)


def per_position(workdir: Path, log=print) -> dict | None:
    """The run's per-position validation losses ({"loss": [...], "tokens": [...]}, the run's
    own validation set pooled) at its latest checkpoint, evaluated now unless on file for that
    step (a resumed sweep extends its runs); None if the run has no checkpoint or the
    evaluation fails (the report says which)."""
    path, steps = workdir / PER_POSITION, saved_steps(workdir / "checkpoints")
    if not steps:
        return None
    if not path.exists() or json.loads(path.read_text()).get("step") != steps[-1]:
        log(f"evaluating per-position losses of {workdir.name} ...")
        result = subprocess.run([sys.executable, "-m", "llmjax.cli.eval", f"--workdir={workdir}",
                                 "--per_position", f"--out={path}"], capture_output=True, text=True)
        if result.returncode != 0:
            log(f"  {workdir.name}: {(result.stderr.strip().splitlines() or ['failed'])[-1]}")
            return None
    curves = json.loads(path.read_text())["per_position"]
    return curves.get("all") or next(iter(curves.values()))


def binned(curve: dict, bins: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(position + 1, mean loss) over geometrically growing bins of positions: single
    positions are noisy late in the context, where few documents are that long."""
    loss, tokens = np.asarray(curve["loss"], np.float64), np.asarray(curve["tokens"], np.float64)
    edges = np.unique(np.geomspace(1, len(loss) + 1, bins + 1).astype(int))
    x, y = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        weights = tokens[lo - 1:hi - 1]
        if weights.sum() > 0:
            x.append(math.sqrt(lo * (hi - 1)) if hi - 1 > lo else lo)
            y.append(float(np.nansum(loss[lo - 1:hi - 1] * weights) / weights.sum()))
    return np.asarray(x), np.asarray(y)


def _style(rows: list[dict]):
    """A colour per family and a line style per size rank within it."""
    families = sorted({r.get("family", "?") for r in rows})
    colours = {f: f"C{i}" for i, f in enumerate(families)}
    sizes = {}
    for family in families:
        ranked = sorted(r.get("non_embedding_params", 0) for r in rows if r.get("family", "?") == family)
        for rank, n in enumerate(ranked):
            sizes[(family, n)] = ("-", "--", ":", "-.")[rank % 4] if len(ranked) > 1 else "-"
    return lambda r: (colours[r.get("family", "?")], sizes[(r.get("family", "?"), r.get("non_embedding_params", 0))])


def _label(r: dict) -> str:
    return f"{r.get('family', '?')} {r.get('non_embedding_params', 0) / 1e6:.2g}M"


def plot_loss_vs_compute(rows: list[dict], path: Path, figure) -> None:
    """Final validation loss against training compute, one line per family through its sizes
    (finished runs only: an unfinished one's loss is not at the compute it has spent)."""
    plt, fig, ax = figure()
    style = _style(rows)
    for family in sorted({r.get("family", "?") for r in rows}):
        done = sorted((r for r in rows if r.get("family") == family and r.get("compute")
                       and math.isfinite(r["final_val_loss"])), key=lambda r: r["compute"])
        if done:
            ax.plot([r["compute"] for r in done], [r["final_val_loss"] for r in done], "o-",
                    color=style(done[0])[0], label=family)
            for r in done:
                ax.annotate(f"{r['non_embedding_params'] / 1e6:.2g}M", (r["compute"], r["final_val_loss"]),
                            fontsize=7)
    ax.set(xscale="log", xlabel="training compute (FLOPs)", ylabel="final val loss (nats/token)",
           title="Loss against compute, per family (labels: non-embedding parameters)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_per_position(rows: list[dict], path: Path, figure) -> None:
    """Validation loss at each position in the context, one curve per run."""
    plt, fig, ax = figure()
    style = _style(rows)
    for r in sorted(rows, key=_order):
        if r.get("per_position"):
            x, y = binned(r["per_position"])
            colour, line = style(r)
            ax.plot(x, y, line, color=colour, label=_label(r))
    ax.set(xscale="log", xlabel="position in the context (tokens seen + 1)", ylabel="val loss (nats/token)",
           title="Loss per position in the context (Kaplan et al. 2020, fig. 7)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(sweep_dir: Path, rows: list[dict], sweep: dict, figure, log=print) -> tuple[str, list[Path]]:
    """(the family table, the plots written) for a sweep whose spec says `families`."""
    plots, compared = [sweep_dir / "loss_vs_compute_by_family.png"], causal(rows)
    plot_loss_vs_compute(compared, plots[0], figure)
    if sweep.get("per_position"):
        for r in compared:
            r["per_position"] = per_position(sweep_dir / "runs" / r["name"], log) if r["status"] == "done" else None
        if any(r["per_position"] for r in compared):
            plots.append(sweep_dir / "loss_by_position.png")
            plot_per_position(compared, plots[-1], figure)
    return table(rows), plots
