"""The report's INT8 section: the fp32 / INT8 (and teacher fp32) figures of ``visiondistill export --quantize int8``.

They are read from the summaries written next to a run's ONNX files (``<run>/checkpoints/<name>.quantization.json``,
`visiondistill.reporting.quantize`).

Only exports written inside the run folder (the default ``--output``) are found; the section is left out when no run
has one.
"""

from __future__ import annotations

import json
from typing import Any

from visiondistill.reporting.document import Block, Heading, Paragraph, Table
from visiondistill.reporting.quantize import head_figures, headline_keys, model_rows
from visiondistill.reporting.sections.context import SectionContext

__all__ = ["quantization_section"]


def quantization_section(context: SectionContext) -> list[Block]:
    """One table row per measured model of every ``*.quantization.json`` in the runs' ``checkpoints/`` folders.

    The columns are the summaries' headline metrics (a multi-task student's per head, ``test/cls/acc_top1``,
    ``test/seg/miou``; its teachers one row each, scored on their head); INT8 against fp32 is in a note per file
    (per head for a multi-task student).
    """
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for run in context.runs:
        for path in sorted((run.path / "checkpoints").glob("*.quantization.json")):
            summary = json.loads(path.read_text())
            keys = headline_keys(summary)
            for label, variant in model_rows(summary):
                headline = {key: float(variant["metrics"][key]) for key in keys if key in variant["metrics"]}
                rows.append({"run": run.name, "file": path.name, "model": label, **headline})
                rows[-1] |= {"latency_ms": variant["latency_ms"], "size_mb": variant["size_mb"]}
            notes.append(
                f"`{run.name}/checkpoints/{path.name}`: INT8 vs fp32 prediction agreement "
                f"{summary['agreement']:.3f}, relative error {summary['relative_error']:.3f}{head_figures(summary)}, "
                f"{summary['calibration_images']} calibration images, {summary['threads']} thread(s)."
                + "".join(f" {note}" for note in summary.get("notes") or [])  # e.g. the nodes left in fp32
            )
    if not rows:
        return []
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = [{column: _cell(row.get(column)) for column in columns} for row in rows]
    intro = (
        "From `visiondistill export --quantize int8` (docs/export.md): the task's test metrics and the median batch-1 "
        "latency in onnxruntime (CPU) of the fp32 and INT8 students, and of the teacher in fp32."
    )
    return [Heading("INT8 on the edge runtime"), Paragraph(intro), Table(table), *map(Paragraph, notes)]


def _cell(value: Any) -> Any:
    if value is None:
        return "–"
    return round(value, 4) if isinstance(value, float) else value
