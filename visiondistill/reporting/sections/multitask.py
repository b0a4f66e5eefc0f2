"""The multi-task section of a report: one student against the teachers of its heads, metric by metric and in cost.

A multi-task student (`visiondistill.tasks.MultiTaskModule`, docs/multitask.md) replaces one teacher per head. Its
teachers are not run folders of the report (they belong to other tasks); they are rebuilt from the distilled run's
recorded ``teachers`` (specs and checkpoints) and measured here on the same test split: each teacher's own head
metric, and its parameters, FLOPs and latency, measured as the generic report measures the runs.
"""

from __future__ import annotations

from typing import Any

import torch

from visiondistill.core.errors import VisionDistillError
from visiondistill.core.protocol import batch_inputs
from visiondistill.reporting.cost import count_flops, count_parameters, measure_latency
from visiondistill.reporting.document import Block, Heading, Paragraph, Table
from visiondistill.reporting.measure import Measurements, teacher_heads
from visiondistill.reporting.sections.context import SectionContext
from visiondistill.tasks.multitask import HEAD_METRICS

__all__ = ["multitask_section"]


def _ratio(reference: float, value: float) -> str:
    return f"{reference / value:.1f}×" if value > 0 else "–"


def _row(name: str, role: str, heads: str, scores: dict[str, float], keys: list[str], cost: Measurements) -> dict:
    return {
        "network": name,
        "role": role,
        "heads": heads,
        **{key: f"{100 * scores[key]:.1f}%" if key in scores else "–" for key in keys},
        "params": f"{cost.params / 1e6:.3f} M",
        "MFLOPs": f"{cost.flops / 1e6:.1f}",
        "latency": f"{cost.latency_ms:.2f} ms",
        **dict.fromkeys(("params ratio", "FLOPs ratio", "speed-up"), "–"),
    }


@torch.no_grad()
def multitask_section(context: SectionContext) -> list[Block]:
    """Each head's test metric and the cost of every teacher, of the teachers together, and of every student run.

    Nothing when no run recorded teachers; a paragraph saying why when they cannot be rebuilt (e.g. a checkpoint
    that moved).
    """
    source = next((run for run in context.students if teacher_heads(run)), None)
    if source is None:
        return []
    module = context.modules[source.name]
    heads = teacher_heads(source)
    keys = [f"test/{head}/{HEAD_METRICS[head]}" for head in module.heads]
    heading = Heading("Multi-task: the student against the teachers of its heads")
    try:
        teachers = module.build_teachers(source.hparams["teachers"])
    except (VisionDistillError, OSError) as error:
        context.log(f"   teachers of {source.name} not rebuilt: {error}")
        return [heading, Paragraph(f"The teachers of `{source.name}` could not be rebuilt: {error}")]
    example = batch_inputs(context.batch)[:1]
    rows: list[dict[str, Any]] = []
    total = Measurements(test={}, params=0, flops=0, latency_ms=0.0, checkpoint_mb=0.0)
    for teacher_id, network in teachers.items():
        head = heads[teacher_id]
        scores = module.score_heads({head: network}, context.datamodule.test_dataloader())
        cost = Measurements(
            test=scores,
            params=count_parameters(network),
            flops=count_flops(network, example),
            latency_ms=measure_latency(network, example),
            checkpoint_mb=0.0,
        )
        rows.append(_row(teacher_id, "teacher", head, scores, keys, cost))
        total.test |= scores
        total.params, total.flops, total.latency_ms = (
            total.params + cost.params,
            total.flops + cost.flops,
            total.latency_ms + cost.latency_ms,
        )
    rows.append(_row("teachers together", "–", "+".join(sorted(set(heads.values()))), total.test, keys, total))
    for run in context.students:
        measured = context.measured[run.name]
        row = _row(run.name, run.role, "+".join(module.heads), measured.test, keys, measured)
        row |= {
            "params ratio": _ratio(total.params, measured.params),
            "FLOPs ratio": _ratio(total.flops, measured.flops),
            "speed-up": _ratio(total.latency_ms, measured.latency_ms),
        }
        rows.append(row)
    return [
        heading,
        Paragraph(
            f"The teachers of `{source.name}`, rebuilt from its recorded specs and checkpoints, scored on the same "
            "test split with the student's own head metrics (top-1 on the image's class, mIoU on the mask), and "
            "measured as the runs are (parameters, FLOPs of one forward pass on one test image, batch-1 CPU "
            "latency). `teachers together` is what one student replaces: the teachers' parameters, FLOPs and "
            "latencies added up (run one after the other). Ratios are that total over the student's."
        ),
        Table(rows),
    ]
