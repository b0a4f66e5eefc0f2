"""Explaining one head of a multi-head student: which head, with which adapter, against which teacher.

A module whose student returns a dict of heads (`visiondistill.tasks.MultiTaskModule`, docs/multitask.md) declares:

- ``heads``: the head names (the keys of the student's output);
- ``saliency_heads``: the saliency adapter of each head (classification for a class head, segmentation for a mask);
- ``teacher_heads``: the head each teacher teaches, by teacher id;
- ``head_batch(batch, head)``: the batch as that head's single-task view (its targets under ``target``).

An explanation callback given ``head`` explains that head of the student (`HeadView`) with the head's adapter, on
the head's view of the batch, against the teacher of that head. Single-output modules are untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from typing_extensions import override

from visiondistill.core.errors import ConfigError
from visiondistill.core.saliency import SaliencyAdapter, saliency_adapter_for
from visiondistill.core.teachers import explained_teacher, select_teacher

__all__ = ["ExplainedHead", "HeadView", "explained_head"]


class HeadView(nn.Module):
    """One head of a multi-head network: ``forward`` returns ``model(x)[head]``.

    The view holds the network's own children under their own names (and its ``feature_info``), so a layer path or
    stage index means the same module in the view as in the network, and grad-cam hooks on it see the view's passes.
    """

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "viewed", model)  # not registered: its children are this view's already
        self.head = head
        if hasattr(model, "feature_info"):
            self.feature_info = model.feature_info

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.viewed(x)[self.head]


@dataclass(frozen=True)
class ExplainedHead:
    """What an explanation callback explains on its module: a head (``None``: the whole output) and its teacher.

    Attributes:
        head: The head explained, or ``None`` on a single-output module.
        adapter: The saliency adapter of that head (of the module, for ``None``).
        teacher_id: The teacher compared with: the callback's ``teacher``, else the head's teacher; ``None``: the
            module's first teacher (single-output) or none (a head without a teacher).
    """

    head: str | None
    adapter: SaliencyAdapter
    teacher_id: str | None = None

    def student(self, network: nn.Module) -> nn.Module:
        """The network as explained: its head's view on a multi-head student, else itself."""
        return HeadView(network, self.head) if self.head is not None else network

    def teacher(self, pl_module: Any, who: str) -> nn.Module | None:
        """The teacher compared with, or ``None``."""
        if self.head is None:
            return explained_teacher(pl_module, self.teacher_id, who)
        return select_teacher(pl_module, self.teacher_id, who) if self.teacher_id is not None else None

    def batch(self, pl_module: Any, batch: Any) -> Any:
        """The batch the adapter reads: the head's single-task view on a multi-head module, else the batch."""
        return pl_module.head_batch(batch, self.head) if self.head is not None else batch

    def class_names(self, pl_module: Any) -> list[str] | None:
        """The names of the classes the head predicts (``None``: the adapter's default)."""
        if self.head is None:
            return None
        names = pl_module.head_class_names(self.head)
        return [str(name) for name in names] if names else None


def explained_head(pl_module: Any, head: str | None, teacher_id: str | None, who: str) -> ExplainedHead:
    """Which head of ``pl_module``'s student an explanation callback explains, and against which teacher.

    Args:
        pl_module: The LightningModule.
        head: The callback's ``head`` argument.
        teacher_id: The callback's ``teacher`` argument.
        who: The callback, for messages.

    Raises:
        ConfigError: On a multi-head module, for no ``head``, an unknown one, or a ``teacher`` that teaches another
            head; on a single-output module, for a ``head`` at all. Messages name the heads and the teachers.
    """
    heads = tuple(getattr(pl_module, "heads", ()) or ())
    if not heads:
        if head is not None:
            raise ConfigError(
                f"{who}: head={head!r}, but the student of {type(pl_module).__name__} has a single output; leave "
                "`head` unset"
            )
        return ExplainedHead(None, saliency_adapter_for(pl_module), teacher_id)
    name = type(pl_module).__name__
    if head is None:
        raise ConfigError(
            f"{who}: the student of {name} has several heads ({', '.join(heads)}); name the one to explain with "
            f"`head: <name>`, e.g. head: {heads[0]}"
        )
    if head not in heads:
        raise ConfigError(f"{who}: unknown head {head!r}; the student of {name} has the heads {', '.join(heads)}")
    teachers: Mapping[str, str] = getattr(pl_module, "teacher_heads", None) or {}
    own = [tid for tid, taught in teachers.items() if taught == head]
    if teacher_id is not None and teacher_id not in own:
        pairs = ", ".join(f"{tid} -> {taught}" for tid, taught in teachers.items()) or "none"
        raise ConfigError(
            f"{who}: teacher {teacher_id!r} does not teach head {head!r} (teachers and their heads: {pairs}); name "
            f"the teacher of head {head!r}, or leave `teacher` unset"
        )
    adapter = pl_module.saliency_heads[head]
    adapter = adapter() if isinstance(adapter, type) else adapter
    return ExplainedHead(head, adapter, teacher_id if teacher_id is not None else (own[0] if own else None))
