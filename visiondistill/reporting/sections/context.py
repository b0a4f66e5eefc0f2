"""What a task's report section is given: the runs, their rebuilt task modules, the test data and the output folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from visiondistill.core.saliency import SaliencyAdapter
from visiondistill.explain.heads import HeadView, explained_head
from visiondistill.reporting.document import Block
from visiondistill.reporting.measure import Measurements
from visiondistill.reporting.runs import Run


@dataclass
class SectionContext:
    """The material of one report, handed to every section builder of the runs' task.

    Attributes:
        runs: The runs in report order (teacher, scratch, distilled), roles assigned.
        modules: Their task modules by run name (students only, eval mode, CPU; tested on the test split, so set up
            with the datamodule).
        datamodule: The datamodule the runs were tested on.
        batch: The first ``num_images`` test samples, collated as the test loader collates them.
        measured: The generic measurements by run name.
        out: The report's folder (pictures go here).
        log: Where progress lines go.
        head: On a multi-task student, the head a section explains (`for_head`): `network` is then that head's
            view of every run's network, ``batch`` the head's view of the batch; ``None``: the whole output.
    """

    runs: Sequence[Run]
    modules: Mapping[str, Any]
    datamodule: Any
    batch: Any
    measured: Mapping[str, Measurements]
    out: Path
    log: Callable[[str], Any] = print
    head: str | None = None

    @property
    def teacher(self) -> Run | None:
        """The teacher run, or ``None`` when the report has none."""
        return next((run for run in self.runs if run.role == "teacher"), None)

    @property
    def students(self) -> list[Run]:
        """Every run but the teacher, in report order."""
        return [run for run in self.runs if run.role != "teacher"]

    @property
    def shown_student(self) -> Run | None:
        """The student pictures show: the last distilled run, else the last student."""
        distilled = [run for run in self.runs if run.role == "distilled"]
        return (distilled or self.students or [None])[-1]

    def network(self, run: Run) -> nn.Module:
        """The trained network of a run (eval mode); on a multi-task student given ``head``, that head's view."""
        network = self.modules[run.name].student.eval()
        return HeadView(network, self.head).eval() if self.head is not None else network

    def for_head(self, head: str) -> SectionContext:
        """This context for one head of a multi-task student: its networks, batch and saliency adapter."""
        module = self.modules[self.runs[0].name]
        return replace(self, head=head, batch=module.head_batch(self.batch, head))

    def saliency_adapter(self) -> SaliencyAdapter:
        """The saliency adapter of the runs' task (of ``head``, on a multi-task student).

        Raises:
            ConfigError: On a multi-task student without ``head`` (`visiondistill.explain.heads.explained_head`).
        """
        return explained_head(self.modules[self.runs[0].name], self.head, None, "visiondistill report").adapter

    def display(self, images: Tensor) -> Tensor:
        """Normalised input images back in [0, 1] for pictures (the datamodule's ``mean``/``std``, if it has them)."""
        mean, std = getattr(self.datamodule, "mean", None), getattr(self.datamodule, "std", None)
        if mean is None or std is None:
            return images.clamp(0, 1)
        shape = (1, -1, 1, 1)
        return (images * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0, 1)


#: A task's contribution to the report: blocks built from the context (it may write pictures into ``context.out``).
SectionBuilder = Callable[[SectionContext], list[Block]]
