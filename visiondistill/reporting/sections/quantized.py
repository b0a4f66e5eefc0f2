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
from visiondistill.reporting.sections.context import SectionContext

__all__ = ["quantization_section"]

_MODELS = (("fp32", "student fp32"), ("int8", "student INT8"), ("teacher", "teacher fp32"))


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.count("/") == 1 and not k.endswith("loss")}


def quantization_section(context: SectionContext) -> list[Block]:
    """One table row per measured model of every ``*.quantization.json`` in the runs' ``checkpoints/`` folders."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for run in context.runs:
        for path in sorted((run.path / "checkpoints").glob("*.quantization.json")):
            summary = json.loads(path.read_text())
            for key, label in _MODELS:
                variant = summary.get(key)
                if variant:
                    rows.append({"run": run.name, "file": path.name, "model": label, **_headline(variant["metrics"])})
                    rows[-1] |= {"latency_ms": variant["latency_ms"], "size_mb": variant["size_mb"]}
            notes.append(
                f"`{run.name}/checkpoints/{path.name}`: INT8 vs fp32 prediction agreement "
                f"{summary['agreement']:.3f}, relative error {summary['relative_error']:.3f}, "
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
