"""Teacher classes mapped onto the student's classes, for a teacher trained on more or other classes.

A class map says, for each teacher class, which student class it belongs to (or that it is dropped). The teacher's
logits are then aggregated per student class with ``logsumexp``, which sums the teacher's probabilities over the
teacher classes of each student class; dropped teacher classes take no part, so the mapped probabilities are the
sums renormalised over the kept classes. Every student class must receive at least one teacher class: a student
class the teacher knows nothing about has no soft target to learn from.

Two spellings, both YAML-friendly:

- a list with one entry per teacher class: the student class index, or ``null`` to drop it
  (``[0, 0, 1, null, 2]``: teacher classes 0 and 1 become student class 0, teacher class 3 is dropped);
- a mapping ``{teacher class: student class}``; teacher classes not listed are dropped (``{0: 0, 1: 0, 2: 1, 4: 2}``),
  convenient for a 1000-class ImageNet teacher of which a few classes matter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from visiondistill.core.errors import ConfigError

__all__ = ["ClassMap", "ClassMapLike", "map_logits"]

ClassMapLike = Sequence[int | None] | Mapping[int, int]


@dataclass(frozen=True)
class ClassMap:
    """A validated teacher → student class map.

    Attributes:
        pairs: ``(teacher class, student class)`` for every kept teacher class, sorted by teacher class.
        num_teacher_classes: The teacher's class count when the map fixes it (the list spelling), else ``None``
            (the mapping spelling: taken from the teacher's logits).
    """

    pairs: tuple[tuple[int, int], ...]
    num_teacher_classes: int | None = None

    @classmethod
    def parse(cls, value: ClassMapLike | ClassMap, who: str = "class_map") -> ClassMap:
        """Reads a class map from its list or mapping spelling and checks its indices.

        Args:
            value: The list (one student index or ``None`` per teacher class) or the ``{teacher: student}`` mapping.
            who: The option named in messages (``"LogitDistillation.class_map"``, ``"teacher.class_map"``).

        Returns:
            The class map.

        Raises:
            ConfigError: On another type, a non-integer or negative index, or a map that keeps no class.
        """
        if isinstance(value, ClassMap):
            return value
        if isinstance(value, Mapping):
            items = [
                (_index(t, who, "teacher class"), _index(s, who, f"student class of teacher class {t}"))
                for t, s in value.items()
            ]
            count = None
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            items = [(t, _index(s, who, f"entry {t}")) for t, s in enumerate(value) if s is not None]
            count = len(value)
        else:
            raise ConfigError(
                f"{who} must be a list (one student class index or null per teacher class) or a mapping "
                f"{{teacher class: student class}}, got {type(value).__name__} {value!r}"
            )
        if not items:
            raise ConfigError(f"{who} keeps no teacher class: map at least one teacher class to a student class")
        return cls(tuple(sorted(items)), count)

    @property
    def num_student_classes(self) -> int:
        """The student classes the map reaches: one more than the largest student index."""
        return max(student for _teacher, student in self.pairs) + 1

    def check(self, num_teacher: int | None, num_student: int | None, who: str = "class_map") -> None:
        """Checks the map against the teacher's and the student's class counts (``None``: not known yet).

        Raises:
            ConfigError: When an index is out of range, the list's length is not the teacher's class count, or a
                student class receives no teacher class.
        """
        if num_teacher is not None:
            if self.num_teacher_classes is not None and self.num_teacher_classes != num_teacher:
                raise ConfigError(
                    f"{who} lists {self.num_teacher_classes} teacher classes but the teacher predicts {num_teacher}; "
                    f"give one entry per teacher class (null drops one)"
                )
            beyond = sorted({t for t, _s in self.pairs if t >= num_teacher})
            if beyond:
                raise ConfigError(
                    f"{who}: teacher class index {beyond[0]} is out of range: the teacher predicts {num_teacher} "
                    f"classes (0..{num_teacher - 1})"
                )
        if num_student is not None:
            beyond = sorted({s for _t, s in self.pairs if s >= num_student})
            if beyond:
                raise ConfigError(
                    f"{who}: student class index {beyond[0]} is out of range: the student predicts {num_student} "
                    f"classes (0..{num_student - 1})"
                )
            uncovered = sorted(set(range(num_student)) - {s for _t, s in self.pairs})
            if uncovered:
                raise ConfigError(
                    f"{who}: student classes {uncovered} receive no teacher class; map at least one teacher class to "
                    f"each student class (a class the teacher does not know has no soft target to learn from)"
                )

    def matrix(self, num_teacher: int, num_student: int, device: torch.device | None = None) -> Tensor:
        """The boolean ``num_student × num_teacher`` membership matrix (row ``s``: the teacher classes of ``s``)."""
        member = torch.zeros(num_student, num_teacher, dtype=torch.bool, device=device)
        for teacher, student in self.pairs:
            member[student, teacher] = True
        return member


def map_logits(
    logits: Tensor,
    class_map: ClassMap | ClassMapLike,
    num_student: int | None = None,
    temperature: float = 1.0,
    who: str = "class_map",
) -> Tensor:
    """Aggregates teacher logits onto the student's classes: ``T · logsumexp_{t→s}(z_t / T)`` per student class ``s``.

    Then ``softmax(mapped / T)`` equals, for each student class, the sum of ``softmax(z / T)`` over its teacher
    classes, renormalised over the kept ones (exactly the sum when no class is dropped).

    Args:
        logits: Teacher logits ``N×C_t`` (or ``N×C_t×…``, classes on dim 1).
        class_map: The class map.
        num_student: The student's class count; ``None`` takes the map's.
        temperature: The softmax temperature the mapped logits will be used at.
        who: The option named in messages.

    Returns:
        Logits ``N×C_s`` (``N×C_s×…``).

    Raises:
        ConfigError: When the map does not fit the logits or the student's class count.

    Example::

        >>> teacher = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
        >>> map_logits(teacher, [0, 0, 1, 1]).softmax(1)
        tensor([[0.3000, 0.7000]])
    """
    class_map = ClassMap.parse(class_map, who)
    num_student = class_map.num_student_classes if num_student is None else num_student
    class_map.check(logits.shape[1], num_student, who)
    member = class_map.matrix(logits.shape[1], num_student, device=logits.device)
    scaled = (logits / temperature).flatten(2) if logits.ndim > 2 else (logits / temperature).unsqueeze(-1)
    masked = scaled.unsqueeze(1).masked_fill(~member[None, :, :, None], float("-inf"))  # N×C_s×C_t×P
    mapped = temperature * torch.logsumexp(masked, dim=2)  # N×C_s×P
    return mapped.reshape(logits.shape[0], num_student, *logits.shape[2:])


def _index(value: Any, who: str, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # mapping keys from JSON or the command line arrive as strings
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{who}: {what} must be a class index (an integer >= 0), got {value!r}")
    return int(value)
