"""What a sweep found: a table of its runs and the plots a researcher looks at first.

Everything is read from the run directories (config.json, metrics.jsonl, status.json), so a
report works on a sweep that is still running, was interrupted, or ran on a cluster.
"""

from __future__ import annotations

import collections
import json
import math
import statistics
from pathlib import Path

import numpy as np

from llmjax import flops
from llmjax.errors import FlagError
from llmjax.rundir import CONFIG, RunDir, WorkdirError
from llmjax.sweep import families, routing
from llmjax.sweep.manifest import read as read_manifest
from llmjax.sweep.names import format_value


TASK_METRICS = ("accuracy", "macro_f1", "bleu", "chrf", "rouge_l")  # What fine-tuning objectives report.

def _records(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:  # A line cut short by a crash, or edited, is not a record.
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("split"), str) and isinstance(record.get("step"), int):
            out.append(record)
    return out


def collect(sweep_dir: Path) -> tuple[list[dict], dict]:
    """(one row per run, the sweep spec) from `sweep.json` and the run directories."""
    manifest = read_manifest(sweep_dir)
    if manifest is None:
        raise FlagError(f"{sweep_dir} has no sweep.json; give the --workdir of an llmjax-sweep.")
    rows = []
    for entry in manifest["runs"]:
        workdir = sweep_dir / "runs" / entry["name"]
        records = _records(workdir)
        by_step = {}  # A resumed or rolled-back run may log a step twice: the last one counts.
        for r in records:
            by_step[(r["split"], r["step"])] = r
        train = [by_step[k] for k in sorted(k for k in by_step if k[0] == "train")]
        val = [by_step[k] for k in sorted(k for k in by_step if k[0] == "val")]
        status = RunDir(workdir).status()
        steps = max(status.get("step", 0), train[-1]["step"] if train else 0)  # Preempted after its last log.
        row = {"name": entry["name"], "overrides": entry["overrides"], "status": status["state"], "steps": steps,
               "train_loss": train[-1]["loss"] if train else math.nan,
               "val_loss": val[-1]["loss"] if val else math.nan, "val_step": val[-1]["step"] if val else None,
               "val_bpb": val[-1].get("bits_per_byte", math.nan) if val else math.nan,
               "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in train) if train else math.nan,
               "train_curve": [(r["step"], r["loss"]) for r in train],
               "val_curve": [(r["step"], r["loss"]) for r in val],
               # A fine-tuning task's held-out metrics: final values and their curves.
               "task_curves": {m: [(r["step"], r[m]) for r in val if m in r] for m in TASK_METRICS
                               if any(m in r for r in val)},
               "routing": routing.curves(train)}
        config = _config(workdir, row)
        if config is not None:
            tokens_per_step = config.train.global_batch_size * config.data.seq_len
            row["tokens"] = row["steps"] * tokens_per_step
            row["params"] = flops.param_count(config.model)
            row["non_embedding_params"] = flops.non_embedding_params(config.model)
            row["family"] = config.model.get("family", "llama")
            row["objective"] = config.get("objective", {}).get("name", "causal_lm")
            row["val_accuracy"] = val[-1].get("accuracy", math.nan) if val else math.nan
            row["flops_per_step"] = flops.flops_per_token(config) * tokens_per_step
            row["compute"] = row["flops_per_step"] * row["steps"]
        row["left_out"] = _left_out(row)
        row["final_val_loss"] = math.nan if row["left_out"] else row["val_loss"]
        at = row["val_step"]  # Shown with the loss when not the run's last step.
        row["val_text"] = f"{row['val_loss']:.4f}" + (f"@{at}" if at is not None and at != steps else "")
        rows.append(row)
    return rows, manifest.get("sweep", {})


def _config(workdir: Path, row: dict):
    """The run's config (with defaults for fields added since it was saved, e.g. the MoE ones),
    None before the run has saved one; a damaged one is None too, its error in the row for the
    table, which shows the run without the figures that need it."""
    if not (workdir / CONFIG).exists():
        return None
    try:
        return RunDir(workdir).config
    except WorkdirError as error:
        row["config_error"] = str(error)
        return None


def _left_out(row: dict) -> str | None:
    """Why the run's last val loss is not a final one (None when it is): plots of final loss
    compare runs at the end of their training, and with the loss they were evaluated on."""
    if row["status"] != "done":
        return f"{row['status']} at step {row['steps']}"
    if row["val_step"] is None:
        return f"done at step {row['steps']}, never evaluated"
    if row["val_step"] != row["steps"]:
        return f"done at step {row['steps']}, last evaluated at step {row['val_step']}"
    return None if math.isfinite(row["val_loss"]) else f"done at step {row['steps']}, val loss {row['val_loss']}"


def table(rows: list[dict]) -> str:
    """One line per run; a column for each task metric any run reports (fine-tuning)."""
    width = max([40] + [len(r["name"]) for r in rows])
    val_width = max([9] + [len(r["val_text"]) for r in rows])
    metrics = [m for m in TASK_METRICS if any(m in r["task_curves"] for r in rows)]
    header = (f"{'run':{width}} {'status':10} {'steps':>6} {'tokens':>12} {'train loss':>10} {'val loss':>{val_width}} "
              + "".join(f"{m:>9} " for m in metrics) + f"{'tok/s':>8}  overrides")
    lines = [header, "-" * len(header)]
    for r in rows:
        finals = {m: curve[-1][1] for m, curve in r["task_curves"].items() if curve}
        lines.append(f"{r['name']:{width}} {r['status']:10} {r['steps']:>6} {r.get('tokens', 0):>12,} "
                     f"{r['train_loss']:>10.4f} {r['val_text']:>{val_width}} "
                     + "".join(f"{finals.get(m, math.nan):>9.4f} " for m in metrics)
                     + f"{r['tokens_per_sec']:>8,.0f}  {json.dumps(r['overrides'])}")
    if val_width > 9:
        lines.append("(val loss LOSS@STEP: measured at STEP, before the run's last step)")
    lines += [f"damaged: {r['name']}: {r['config_error']}" for r in rows if r.get("config_error")]
    return "\n".join(lines)


def fit_power_law(compute, loss) -> tuple[float, float]:
    """(a, b) of loss = a * compute^(-b), least squares in log-log space."""
    slope, intercept = np.polyfit(np.log(compute), np.log(loss), 1)
    return float(math.exp(intercept)), float(-slope)


def _figure():
    import matplotlib  # noqa: PLC0415 - plotting is optional at import time.

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt, *plt.subplots(figsize=(7, 4.5), dpi=110)


def plot_curves(rows, path: Path, compute: bool = False) -> None:
    """Training (lines) and validation (dots) loss against the step, or with `compute` against
    the training FLOPs so far (of active parameters: a dense and an MoE run side by side)."""
    plt, fig, ax = _figure()
    for r in rows:
        scale = r.get("flops_per_step", 0) if compute else 1
        if r["train_curve"] and scale:
            steps, losses = zip(*r["train_curve"])
            line, = ax.plot([s * scale for s in steps], losses, label=r["name"], alpha=0.8)
            if r["val_curve"]:
                vsteps, vlosses = zip(*r["val_curve"])
                ax.plot([s * scale for s in vsteps], vlosses, "o--", color=line.get_color(), alpha=0.8, markersize=3)
    if compute:
        ax.set(xscale="log", xlabel="training compute (FLOPs of active parameters)")
    ax.set(xlabel=ax.get_xlabel() or "step", ylabel="loss (nats/token)",
           title="Training (lines) and validation (dots) loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_task_metric(rows, metric: str, path: Path) -> None:
    """A fine-tuning task's held-out metric against the step, one line per run."""
    plt, fig, ax = _figure()
    for r in rows:
        if r["task_curves"].get(metric):
            ax.plot(*zip(*r["task_curves"][metric]), "o-", label=r["name"], markersize=3)
    ax.set(xlabel="step", ylabel=metric, title=f"Held-out {metric}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def categories(rows, key: str, drawn=()) -> list[str]:
    """The other overrides, numeric or not, that take more than one value and repeat them (an
    optimizer's name, a grid's weight decay): one line each when final loss is plotted against
    `key`, since a mean over them can favour another `key` than any of them does. Seeds are
    repeats, averaged; keys `drawn` at random, whose draws repeat only across seeds and grid
    values, and values no two runs share, would make a line per run."""
    found = []
    for other in dict.fromkeys(k for r in rows for k in r["overrides"]):
        values = [json.dumps(r["overrides"].get(other)) for r in rows]
        if other not in (key, "seed", *drawn) and 1 < len(set(values)) < len(values):
            found.append(other)
    return found


def plot_final_vs(rows, key: str, path: Path, drawn=()) -> dict[str, list[tuple]]:
    """Final val loss of the finished runs against `key`: the runs and their mean, one line per
    combination of the categorical overrides; returns each line's label and (x, loss) points.
    An unfinished run's loss is of another step and a train loss of another thing: neither
    belongs among the others, so such runs are left out (`report` lists them)."""
    plt, fig, ax = _figure()
    rows = [r for r in rows if math.isfinite(r["final_val_loss"]) and key in r["overrides"]]
    groups = categories(rows, key, drawn)
    by_group = collections.defaultdict(list)
    for r in rows:
        label = ", ".join(f"{g.split('.')[-1]}={format_value(r['overrides'].get(g))}" for g in groups) or "mean"
        by_group[label].append((r["overrides"][key], r["final_val_loss"]))
    every_x = []
    for label, points in by_group.items():
        xs = sorted({x for x, _ in points})
        every_x += xs
        line, = ax.plot(xs, [statistics.mean(y for x2, y in points if x2 == x) for x in xs], "-", label=label)
        ax.scatter(*zip(*points), alpha=0.6, color=line.get_color())
    if min(every_x) > 0 and max(every_x) / min(every_x) >= 10:
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel="final val loss", title=f"Final loss against {key}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return dict(by_group)


def plot_scaling(rows, path: Path) -> tuple[float, int]:
    """Final val loss against training compute with the fitted power law; returns its exponent
    and the number of runs it was fitted to (the finished ones: compute and loss of the same
    step)."""
    done = [r for r in rows if r.get("compute") and math.isfinite(r["final_val_loss"])]
    compute = np.array([r["compute"] for r in done])
    loss = np.array([r["final_val_loss"] for r in done])
    a, b = fit_power_law(compute, loss)
    plt, fig, ax = _figure()
    ax.scatter(compute, loss, label="runs")
    for r in done:
        ax.annotate(f"{r['params'] / 1e6:.2g}M", (r["compute"], r["final_val_loss"]), fontsize=7)
    grid = np.geomspace(compute.min(), compute.max(), 50)
    ax.plot(grid, a * grid ** -b, "--", label=f"L = {a:.3g} C^-{b:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="training compute (FLOPs)", ylabel="final val loss",
           title=f"Scaling: loss ~ compute^-{b:.3f}")
    from matplotlib.ticker import FormatStrFormatter  # noqa: PLC0415

    for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_formatter(FormatStrFormatter("%.1f"))  # Losses read better as plain numbers.
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return b, len(done)


def report(sweep_dir: Path, log=print) -> tuple[str, list[Path]]:
    """The table text (also written to report.txt) and the PNGs written beside it."""
    rows, sweep = collect(sweep_dir)
    text = table(rows)
    if sweep.get("families"):
        family_text, family_plots = families.report(sweep_dir, rows, sweep, _figure, log)
        text += "\n\n" + family_text
    plots = [sweep_dir / "loss_curves.png"]
    plot_curves(rows, plots[0])
    for metric in TASK_METRICS:
        if any(r["task_curves"].get(metric) for r in rows):
            plots.append(sweep_dir / f"val_{metric}.png")
            plot_task_metric(rows, metric, plots[-1])
    keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
    final = [r for r in rows if math.isfinite(r["final_val_loss"])]
    for key in keys:
        values = {json.dumps(r["overrides"].get(key)) for r in rows}
        numeric = all(isinstance(r["overrides"].get(key), (int, float)) for r in rows)
        if (key != "seed" and len(values) > 1 and numeric and not sweep.get("scaling")
                and any(key in r["overrides"] for r in final)):
            plots.append(sweep_dir / f"final_loss_vs_{key.split('.')[-1]}.png")
            plot_final_vs(rows, key, plots[-1], drawn=tuple(sweep.get("random", {})))
    if sweep.get("scaling") and sum(1 for r in final if r.get("compute")) >= 2:
        plots.append(sweep_dir / "scaling.png")
        exponent, fitted = plot_scaling(rows, plots[-1])
        text += f"\n\nscaling: final val loss ~ compute^-{exponent:.3f} (fitted over {fitted} runs)"
    if sweep.get("families"):
        plots += family_plots
    left_out = [f"left out of the final-loss plots: {r['name']} ({r['left_out']})" for r in rows if r["left_out"]]
    if left_out and any(p.name.startswith(("final_loss_vs_", "scaling", "loss_vs_compute_by_")) for p in plots):
        text += "\n\n" + "\n".join(left_out)
    if routing.any_moe(rows):
        plots += [sweep_dir / "loss_vs_compute.png", sweep_dir / "routing.png"]
        plot_curves(rows, plots[-2], compute=True)
        routing.plot_routing(rows, plots[-1], _figure)
    (sweep_dir / "report.txt").write_text(text + "\n")
    return text, plots
