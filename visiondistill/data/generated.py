"""What every datamodule on the synthetic shapes shares: generate on first use, then check what is on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from visiondistill.core.errors import ConfigError
from visiondistill.data.errors import DataError, MissingDataError
from visiondistill.data.shapes import SHAPE_CLASSES
from visiondistill.data.synthesize import meta_differences, read_meta, write_shapes_dataset


class GeneratedShapes:
    """Mixin for a datamodule that reads one task of the synthetic shapes data set from ``data_dir/<task>``.

    ``prepare_data`` writes the task's data (with `write_shapes_dataset`) when it is missing and ``generate`` is
    true; ``check_data`` (run again in ``setup``) refuses a data set whose ``meta.json`` records other parameters,
    so data generated with other settings is never used silently. Put it before the reading datamodule in the
    bases; that class provides ``data_dir``, ``image_size``, ``seed``, ``in_channels`` and ``setup``.
    """

    shapes_task: ClassVar[str]
    data_dir: Path
    image_size: int
    seed: int
    in_channels: int

    def init_generation(self, generate: bool, num_train: int, num_val: int, num_test: int, difficulty: float) -> None:
        """Validates and stores the generation parameters.

        Raises:
            ValueError: For non-positive train/val counts, a negative test count or a negative difficulty.
        """
        if num_train <= 0 or num_val <= 0 or num_test < 0:
            raise ConfigError(
                f"need num_train > 0, num_val > 0 and num_test >= 0, got num_train={num_train!r}, "
                f"num_val={num_val!r}, num_test={num_test!r}"
            )
        if difficulty < 0:
            raise ConfigError(f"difficulty must be >= 0, got {difficulty!r}")
        self.generate = generate
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.difficulty = difficulty

    @property
    def image_root(self) -> Path:
        """``data_dir/<task>``."""
        return self.data_dir / self.shapes_task

    @property
    def splits(self) -> dict[str, int]:
        """Requested images per split (a split with 0 images is not generated)."""
        return {name: n for name, n in (("train", self.num_train), ("val", self.num_val), ("test", self.num_test)) if n}

    def missing_data_hint(self) -> str:
        """Explain how to generate the data."""
        return (
            f"Generate it with `visiondistill synth --out {self.data_dir} --tasks {self.shapes_task} "
            f"--image-size {self.image_size} --num-train {self.num_train} --num-val {self.num_val} "
            f"--num-test {self.num_test} --seed {self.seed} --difficulty {self.difficulty}"
            f"{' --grayscale' if self.in_channels == 1 else ''}`, or set generate: true."
        )

    def _request(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "difficulty": float(self.difficulty),
            "grayscale": self.in_channels == 1,
            "classes": list(SHAPE_CLASSES),
            "seed": self.seed,
            "splits": self.splits,
        }

    def check_data(self) -> None:
        """Check the data set on disk exists and matches the requested parameters.

        Raises:
            MissingDataError: When ``data_dir/<task>`` does not exist.
            DataError: When ``meta.json`` records other parameters, or lacks this task.
        """
        if not self.image_root.is_dir():
            raise MissingDataError(
                f"Data folder '{self.image_root}' does not exist. {self.missing_data_hint()}", path=self.image_root
            )
        meta = read_meta(self.data_dir)
        if meta is None:
            rank_zero_warn(
                f"'{self.data_dir}' has no meta.json, so its parameters cannot be checked; using the images as found."
            )
            return
        differences = meta_differences(meta, self._request())
        if self.shapes_task not in meta.get("tasks", []):
            differences.append(f"tasks: on disk {meta.get('tasks')}, {self.shapes_task} requested")
        if differences:
            raise DataError(
                f"The shapes data set at '{self.data_dir}' does not match this data module ("
                + "; ".join(differences)
                + f"). Point data_dir at another folder, or delete '{self.data_dir}' to regenerate it."
            )

    def prepare_data(self) -> None:
        """Generate the task's data when it is missing (and ``generate`` is true), then check it matches."""
        meta = read_meta(self.data_dir)
        complete = self.image_root.is_dir() and (meta is None or self.shapes_task in meta.get("tasks", []))
        if not complete and self.generate and (meta is None or not meta_differences(meta, self._request())):
            rank_zero_info(f"Generating the shapes {self.shapes_task} data set in '{self.data_dir}'.")
            write_shapes_dataset(
                self.data_dir,
                tasks=(self.shapes_task,),
                splits=self.splits,
                image_size=self.image_size,
                seed=self.seed,
                grayscale=self.in_channels == 1,
                difficulty=self.difficulty,
            )
        self.check_data()

    def setup(self, stage: str | None = None) -> None:
        """Check the data on disk, then build the datasets."""
        self.check_data()
        super().setup(stage)  # type: ignore[misc]
