"""PNG plots of logged curves: the task metric, agreement with the teacher and distillation terms over epochs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from visiondistill.reporting.runs import Run

#: Line colour per role, so that the three kinds of run read the same in every plot.
ROLE_COLOURS = {"teacher": "#444444", "scratch": "#1f77b4", "distilled": "#d62728"}


def plot_curves(runs: Sequence[Run], tags: Sequence[str], path: Path, title: str) -> Path | None:
    """One panel per tag, one line per run that logged it, against epochs; ``None`` when no run logged any tag.

    Args:
        runs: The runs.
        tags: Scalar tags (e.g. ``val/miou``), one panel each, in this order.
        path: The PNG to write.
        title: The figure's title.

    Returns:
        ``path``, or ``None`` when nothing was plotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tags = [tag for tag in tags if any(run.scalars.get(tag) for run in runs)]
    if not tags:
        return None
    columns = min(3, len(tags))
    rows = math.ceil(len(tags) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    styles = ("-", "--", ":", "-.")
    for index, tag in enumerate(tags):
        axis = axes[index // columns][index % columns]
        seen: dict[str, int] = {}
        for run in runs:
            points = _per_epoch(run.scalars.get(tag, []))
            if not points:
                continue
            style = styles[seen.get(run.role, 0) % len(styles)]
            seen[run.role] = seen.get(run.role, 0) + 1
            epochs, values = zip(*points, strict=True)
            axis.plot(epochs, values, style, color=ROLE_COLOURS[run.role], label=f"{run.name} ({run.role})", lw=1.6)
        axis.set_title(tag, fontsize=9)
        axis.set_xlabel("epoch", fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for index in range(len(tags), rows * columns):
        axes[index // columns][index % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for axis in row:
            for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
    figure.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 3), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _per_epoch(points: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """The last value logged in each epoch (step-level tags log many per epoch)."""
    last: dict[int, float] = {}
    for epoch, value in points:
        last[epoch] = value
    return sorted(last.items())
