"""The routing of a sweep's mixture-of-experts runs, per layer over training, from the
per-layer metrics the train step logs (`llmjax.model.layers.moe_stats`): load imbalance, the
busiest expert's share of the token-expert pairs times the number of experts (1 is perfectly
balanced, E is every pair on one expert), and the fraction of pairs dropped for capacity. For
such a sweep the report also draws every run's loss against compute (`report.plot_curves`).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

_FRACTION = re.compile(r"moe_expert_fraction/layer_(\d+)/expert_(\d+)$")


def curves(train_records: list[dict]) -> dict[int, list[tuple[int, float, float]]]:
    """{model layer: [(step, imbalance, dropped fraction)]} of a run's train records; {} for
    a dense run."""
    out = collections.defaultdict(list)
    for r in train_records:
        fractions = collections.defaultdict(list)
        for key, value in r.items():
            if match := _FRACTION.match(key):
                fractions[int(match[1])].append(value)
        for layer, values in sorted(fractions.items()):
            out[layer].append((r["step"], max(values) * len(values), r.get(f"moe_dropped/layer_{layer}", 0.0)))
    return dict(out)


def any_moe(rows: list[dict]) -> bool:
    return any(r.get("routing") for r in rows)


def plot_routing(rows: list[dict], path: Path, figure) -> None:
    """Per MoE run and layer: load imbalance (left) and dropped pairs (right) against step."""
    plt, fig, _ = figure()
    fig.clear()
    imbalance, dropped = fig.subplots(1, 2)
    for i, r in enumerate(r for r in rows if r.get("routing")):
        for j, (layer, points) in enumerate(sorted(r["routing"].items())):
            steps, imb, drop = zip(*points)
            style = dict(color=f"C{i}", linestyle=("-", "--", ":", "-.")[j % 4], label=f"{r['name']} layer {layer}")
            imbalance.plot(steps, imb, **style)
            dropped.plot(steps, drop, **style)
    imbalance.set(xlabel="step", ylabel="busiest expert's share x experts", title="Load imbalance (1 = balanced)")
    dropped.set(xlabel="step", ylabel="fraction of token-expert pairs", title="Dropped for capacity")
    imbalance.legend(fontsize=6)
    for ax in (imbalance, dropped):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
