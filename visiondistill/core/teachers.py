"""Several teachers: how a distillable module holds them, and how callbacks pick one or their ensemble.

A task module with several teachers (``model.init_args.teachers: [{id: a, weight: 0.7, …}, …]``, docs/teachers.md)
keeps them in ``pl_module.teachers`` (an ``nn.ModuleDict`` by id, in the configured order) and their weights in
``pl_module.teacher_weights`` (a dict by id). ``pl_module.teacher`` is the first of them, so every callback that knows
one teacher reads the first by default. In each training step every teacher runs once; the first teacher's output is
the ``teacher_out`` handed to the callbacks, and all of them are in ``pl_module.teacher_outputs`` (a dict by id).

A callback names the teacher it reads with ``teacher: <id>`` (`select_teacher`, `select_teacher_output`); the logit
terms read, by default, the teachers' weighted ensemble of soft targets (`ensemble_logits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from visiondistill.core.errors import ConfigError
from visiondistill.core.protocol import get_teacher

__all__ = [
    "ensemble_logits",
    "explained_teacher",
    "head_output",
    "select_teacher",
    "select_teacher_output",
    "teacher_ids",
    "teacher_weights",
]


def teacher_ids(pl_module: Any) -> list[str]:
    """The ids of a module's teachers, in order; empty for a module with one ``teacher`` (or none)."""
    teachers = getattr(pl_module, "teachers", None)
    return list(teachers.keys()) if isinstance(teachers, nn.ModuleDict) else []


def every_teacher(pl_module: Any) -> list[nn.Module]:
    """Every teacher network of a module: those of ``teachers``, else the one ``teacher`` (empty without one)."""
    teachers = getattr(pl_module, "teachers", None)
    if isinstance(teachers, nn.ModuleDict):
        return list(teachers.values())
    teacher = getattr(pl_module, "teacher", None)
    return [teacher] if isinstance(teacher, nn.Module) else []


def teacher_weights(pl_module: Any) -> dict[str, float]:
    """The weight of each teacher by id (``1.0`` each when the module records none); empty for one teacher."""
    ids = teacher_ids(pl_module)
    weights = getattr(pl_module, "teacher_weights", None) or {}
    return {teacher_id: float(weights.get(teacher_id, 1.0)) for teacher_id in ids}


def check_teacher_id(pl_module: Any, teacher_id: str | None, who: str) -> None:
    """Checks that ``teacher_id`` names one of the module's teachers (``None`` always passes).

    Raises:
        ConfigError: For an unknown id (the message lists the known ones), or any id on a module with one teacher.
    """
    if teacher_id is None:
        return
    ids = teacher_ids(pl_module)
    if not ids:
        raise ConfigError(
            f"{who}: teacher {teacher_id!r} was named, but {type(pl_module).__name__} has a single teacher "
            "(model.init_args.teacher); teacher ids are those of model.init_args.teachers, so leave `teacher` out"
        )
    if teacher_id not in ids:
        raise ConfigError(f"{who}: unknown teacher {teacher_id!r}; the model's teachers are {ids}")


def select_teacher(pl_module: Any, teacher_id: str | None, who: str) -> nn.Module:
    """The teacher network a callback reads: ``pl_module.teachers[teacher_id]``, or the first teacher for ``None``.

    Raises:
        ConfigError: For an unknown id.
        ProtocolError: When the module has no teacher.
    """
    check_teacher_id(pl_module, teacher_id, who)
    if teacher_id is None:
        return get_teacher(pl_module, required=True, who=who)
    return pl_module.teachers[teacher_id]


def explained_teacher(pl_module: Any, teacher_id: str | None, who: str) -> nn.Module | None:
    """The teacher an explanation callback compares with: ``teacher_id``'s, else the first teacher, or ``None``.

    Raises:
        ConfigError: For an unknown id (the message lists the known ones).
    """
    if teacher_id is None:
        return get_teacher(pl_module, required=False)
    return select_teacher(pl_module, teacher_id, who)


def select_teacher_output(pl_module: Any, teacher_id: str | None, teacher_out: Any, who: str) -> Any:
    """The output of the named teacher in this training step; ``teacher_out`` (the first teacher's) for ``None``.

    Raises:
        ConfigError: For an unknown id.
    """
    if teacher_id is None:
        return teacher_out
    check_teacher_id(pl_module, teacher_id, who)
    outputs = getattr(pl_module, "teacher_outputs", None) or {}
    if teacher_id not in outputs:
        raise ConfigError(
            f"{who}: no output of teacher {teacher_id!r} in this step; {type(pl_module).__name__}.training_step must "
            "run every teacher (DistillationTask.teacher_forward does)"
        )
    return outputs[teacher_id]


def head_output(pl_module: Any, teacher_id: str | None, student_out: Any, who: str) -> Any:
    """The part of the student's output a term reads: the head of its teacher on a multi-head module.

    A module whose student has several heads, each distilled from its own teacher (docs/multitask.md), declares
    ``teacher_heads``: a dict teacher id -> head name, the head being a key of the student's output dict. A term that
    names its teacher (``teacher: <id>``) then reads that teacher's head. Any other module: ``student_out`` itself.

    Raises:
        ConfigError: On a multi-head module, when the term names no teacher or an unknown one, or when the student's
            output lacks the teacher's head.
    """
    heads = getattr(pl_module, "teacher_heads", None)
    if not heads:
        return student_out
    pairs = ", ".join(f"{tid} -> {head}" for tid, head in heads.items())
    if teacher_id is None:
        raise ConfigError(
            f"{who}: {type(pl_module).__name__} has several heads, each distilled from its own teacher ({pairs}); "
            "name the teacher this term reads with `teacher: <id>` (the term then reads that teacher's head)"
        )
    if teacher_id not in heads:
        raise ConfigError(f"{who}: unknown teacher {teacher_id!r}; the model's teachers and their heads are {pairs}")
    head = heads[teacher_id]
    if not isinstance(student_out, Mapping) or head not in student_out:
        keys = list(student_out) if isinstance(student_out, Mapping) else type(student_out).__name__
        raise ConfigError(f"{who}: teacher {teacher_id!r} teaches head {head!r}, but the student's outputs are {keys}")
    return student_out[head]


def ensemble_logits(logits: Sequence[Tensor], weights: Sequence[float], temperature: float = 1.0) -> Tensor:
    """Logits whose softmax at ``T`` is the teachers' weighted average of probabilities at ``T``.

    The soft target of an ensemble of teachers is ``p = Σ_i w_i · softmax(t_i / T) / Σ_i w_i`` over the class
    dimension (dim 1: ``N×C`` or ``N×C×H×W``), the average of the teachers' softened distributions as in Hinton et
    al. (2015, section 2: the soft targets of an ensemble are its members' averaged predictions) and the averaged
    teacher of multi-teacher KD (e.g. You et al., KDD 2017). Returned as ``T · log p``, so that any term that applies
    ``softmax(· / T)`` to teacher logits (`visiondistill.distill.losses.kd_loss`) sees exactly ``p``. With one
    teacher it returns that teacher's logits unchanged.

    Args:
        logits: The teachers' logits, all of one shape.
        weights: One positive weight per teacher (normalised here).
        temperature: The softmax temperature ``T`` (> 0) of the term that reads the result.

    Returns:
        Logits of the same shape.

    Raises:
        ConfigError: When the shapes differ or the weights are not one positive number per teacher.

    Example::

        >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> # 0.75 · softmax([1, 0]) + 0.25 · softmax([0, 1])
        >>> (ensemble_logits([a, b], [3.0, 1.0], temperature=2.0) / 2.0).softmax(dim=1)
        tensor([[0.6155, 0.3845]])
    """
    if len(logits) != len(weights) or not logits:
        raise ConfigError(f"ensemble_logits: {len(logits)} teacher outputs but {len(weights)} weights")
    if any(not w > 0 for w in weights):
        raise ConfigError(f"ensemble_logits: teacher weights must be > 0, got {list(weights)}")
    if len(logits) == 1:
        return logits[0]
    shapes = {tuple(t.shape) for t in logits}
    if len(shapes) != 1:
        raise ConfigError(
            f"the teachers' logits differ in shape {sorted(shapes)}; an ensemble needs the same classes from every "
            "teacher: give the teachers with other classes a class_map onto the task's classes"
        )
    total = float(sum(weights))
    stacked = torch.stack([torch.log_softmax(t / temperature, dim=1) for t in logits])  # (K, N, C, …)
    log_w = torch.tensor([w / total for w in weights], dtype=stacked.dtype, device=stacked.device).log()
    log_w = log_w.view(-1, *([1] * (stacked.dim() - 1)))
    return temperature * torch.logsumexp(stacked + log_w, dim=0)


def parse_teacher_entries(entries: Any) -> list[tuple[str, float, dict[str, Any]]]:
    """Reads ``model.init_args.teachers``: a list of model specs, each with an optional ``id`` and ``weight``.

    Args:
        entries: A non-empty list of mappings (the model spec's fields plus ``id``, default ``t0``, ``t1``…, and
            ``weight``, default 1).

    Returns:
        ``(id, weight, spec fields)`` per teacher, in order.

    Raises:
        ConfigError: For an empty list, an entry that is no mapping, a duplicate or malformed id, or a weight that is
            not a finite positive number.
    """
    if isinstance(entries, Mapping) or not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
        raise ConfigError(
            "teachers must be a non-empty list of teacher specs, e.g. "
            "[{id: a, weight: 0.5, name: resnet18, checkpoint: runs/a/last.ckpt}, {id: b, …}]"
        )
    parsed: list[tuple[str, float, dict[str, Any]]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"teachers[{index}] must be a mapping of spec fields with id and weight, got {entry!r}")
        fields = dict(entry)
        teacher_id = str(fields.pop("id", None) or f"t{index}")
        weight = fields.pop("weight", 1.0)
        if not teacher_id.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"teachers[{index}].id {teacher_id!r} may hold only letters, digits, '_' and '-'")
        if any(teacher_id == other for other, _, _ in parsed):
            raise ConfigError(f"teachers[{index}].id {teacher_id!r} is used twice; give each teacher its own id")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"teachers[{index}] ({teacher_id}).weight must be a number > 0, got {weight!r}") from None
        if not (weight > 0 and weight != float("inf")):
            raise ConfigError(f"teachers[{index}] ({teacher_id}).weight must be a finite number > 0, got {weight}")
        parsed.append((teacher_id, weight, fields))
    return parsed
