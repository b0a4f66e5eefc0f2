"""Reading a run folder: its config, best checkpoint, logged scalars, and its role in a teacher/student comparison.

A run folder is what ``visiondistill fit`` writes through its TensorBoard logger: ``config.yaml`` (the config as
run), ``checkpoints/best.ckpt`` (or ``last.ckpt``), TensorBoard event files, and the explanation callbacks'
``saliency/`` and ``attention/`` folders. Everything here is read from that folder alone. A run folder is written once
(docs/run_folders.md): ``config.yaml`` is the first command's (a resume's is ``config-resume-<N>.yaml``), and
evaluations live in ``eval/<subcommand>-<checkpoint>/``, whose event files are not read as the run's.
"""

from __future__ import annotations

import csv
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from visiondistill.core.errors import VisionDistillError
from visiondistill.models.checkpoints import read_checkpoint

Role = Literal["teacher", "scratch", "distilled"]

#: Checkpoint file names tried in order inside ``<run>/checkpoints/``: the run's best epoch (never ``best-v1.ckpt``:
#: the folder belongs to one run), else the end of its last epoch.
CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")


class RunError(VisionDistillError, ValueError):
    """A folder that is not a usable visiondistill run folder (the message names the folder and what is missing)."""


@dataclass
class Run:
    """One training run, as read from its folder.

    Attributes:
        path: The run folder.
        name: Its folder name.
        config: ``config.yaml`` as run (LightningCLI's full config).
        checkpoint: The checkpoint used for measurements (``best.ckpt``, else ``last.ckpt``).
        hparams: The task module's hyper-parameters from the checkpoint.
        role: ``"teacher"``, ``"scratch"`` or ``"distilled"`` (see `assign_roles`).
        scalars: Logged scalars by tag: ``[(epoch, value), …]`` (see `read_scalars`).
        train_seconds: Wall time from the first to the last logged scalar (about the training time), or ``None``.
        unreadable: The logged curves (files, columns, loggers) that could not be read, each with the reason.
    """

    path: Path
    name: str
    config: dict[str, Any]
    checkpoint: Path
    hparams: dict[str, Any]
    role: Role = "scratch"
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    train_seconds: float | None = None
    unreadable: list[str] = field(default_factory=list)

    @property
    def teacher_checkpoint(self) -> Path | None:
        """The teacher checkpoint this run distilled from, or ``None``."""
        checkpoints = self.teacher_checkpoints
        return checkpoints[0] if checkpoints else None

    @property
    def teacher_checkpoints(self) -> list[Path]:
        """Every teacher checkpoint this run distilled from: the one ``teacher``'s, or those of ``teachers``."""
        teachers = self.hparams.get("teachers")
        if not isinstance(teachers, list):
            teachers = [self.hparams.get("teacher")]
        return [Path(t["checkpoint"]) for t in teachers if isinstance(t, dict) and t.get("checkpoint")]

    @property
    def task_class_path(self) -> str:
        """Import path of the run's task module (``visiondistill.tasks.ClassificationTask``, …)."""
        path = self.hparams.get("_class_path") or self.config.get("model", {}).get("class_path")
        if not path:
            raise RunError(f"{self.path}: neither the checkpoint nor config.yaml names the task module class")
        return str(path)

    @property
    def task(self) -> str:
        """Short task name: the module class name without ``Task`` in lower case (``classification``, …)."""
        return self.task_class_path.rsplit(".", 1)[-1].removesuffix("Task").lower()

    @property
    def monitor(self) -> tuple[str | None, str]:
        """The metric the run's ModelCheckpoint selected the best checkpoint on, and its mode."""
        for callback in self.callbacks("ModelCheckpoint"):
            args = callback.get("init_args", {})
            if args.get("monitor"):
                return str(args["monitor"]), str(args.get("mode", "min"))
        return None, "min"

    def callbacks(self, class_name: str | None = None) -> list[dict[str, Any]]:
        """The run's callbacks from its config (``class_path``/``init_args`` dicts), optionally of one class name."""
        listed = (self.config.get("trainer") or {}).get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        return [c for c in listed if class_name is None or str(c.get("class_path", "")).endswith(f".{class_name}")]

    @property
    def epochs(self) -> int | None:
        """Epochs the run trained (the last epoch with a logged scalar), or ``None`` when nothing was logged."""
        epochs = [epoch for values in self.scalars.values() for epoch, _ in values]
        return max(epochs) if epochs else None

    @property
    def model_name(self) -> str:
        """The student network, in words (``test_resnet``, ``Unet tu-test_resnet``, …)."""
        spec = self.hparams.get("student") or {}
        parts = [spec.get(key) for key in ("arch", "name", "encoder_name", "backbone") if spec.get(key)]
        return " ".join(str(p) for p in parts) or "?"


def find_checkpoint(run_dir: Path) -> Path:
    """The checkpoint of a run folder: ``checkpoints/best.ckpt``, else ``checkpoints/last.ckpt``.

    Raises:
        RunError: When neither exists.
    """
    for name in CHECKPOINT_NAMES:
        candidate = run_dir / "checkpoints" / name
        if candidate.is_file():
            return candidate
    raise RunError(
        f"{run_dir}: no checkpoint (looked for {', '.join(f'checkpoints/{n}' for n in CHECKPOINT_NAMES)}); "
        "is this the folder of a finished `visiondistill fit` run?"
    )


def read_run(run_dir: str | Path) -> Run:
    """Reads a run folder.

    Args:
        run_dir: The folder of one ``visiondistill fit`` run.

    Returns:
        The run, with its scalars read and role ``"scratch"`` or ``"distilled"`` from its hyper-parameters
        (`assign_roles` decides which runs are teachers).

    Raises:
        RunError: When the folder, its ``config.yaml`` or its checkpoint is missing or unreadable.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder")
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise RunError(f"{path}: no config.yaml (written by `visiondistill fit` into the logger's run folder)")
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RunError(f"{config_path}: not valid YAML ({error})") from error
    checkpoint = find_checkpoint(path)
    hparams = dict(read_checkpoint(checkpoint).get("hyper_parameters") or {})
    if "student" not in hparams:
        raise RunError(f"{checkpoint}: not written by a visiondistill task module (no 'student' hyper-parameter)")
    run = Run(path=path, name=path.name, config=config, checkpoint=checkpoint, hparams=hparams)
    run.role = "distilled" if run.teacher_checkpoint is not None else "scratch"
    run.scalars, run.train_seconds, run.unreadable = read_curves(path, config)
    return run


#: Loggers whose curves `read_curves` reads (class names).
READABLE_LOGGERS = ("TensorBoardLogger", "CSVLogger")

Scalars = dict[str, list[tuple[int, float]]]


def read_scalars(run_dir: Path) -> Scalars:
    """Every scalar logged to the run's TensorBoard event files or ``metrics.csv``, as ``tag → [(epoch, value), …]``.

    Epochs come from Lightning's ``epoch`` scalar (logged at the same global steps); a value logged at a step
    without one takes the epoch of the latest step before it. Epochs count from 1, as people count them.
    """
    return read_curves(run_dir)[0]


def read_curves(run_dir: Path, config: dict[str, Any] | None = None) -> tuple[Scalars, float | None, list[str]]:
    """The run's curves from TensorBoard event files and Lightning's ``CSVLogger`` ``metrics.csv``.

    Args:
        run_dir: The run folder.
        config: Its ``config.yaml``, to name a logger whose files are not read (``WandbLogger``, …).

    Returns:
        The scalars (see `read_scalars`; a tag in both files is taken from the event files), the wall time from the
        first to the last event (``None`` from a CSV log, which records no time), and what could not be read, each
        naming the file, column or logger and the reason.
    """
    scalars: Scalars = {}
    unreadable: list[str] = []
    seconds = None
    try:
        scalars, seconds = read_events(run_dir)
    except Exception as error:  # noqa: BLE001 - a broken event file must not cost the rest of the report
        unreadable.append(f"TensorBoard events in {run_dir}: {type(error).__name__}: {error}")
    csv_path = run_dir / "metrics.csv"
    if csv_path.is_file():
        from_csv, problems = read_metrics_csv(csv_path)
        unreadable += problems
        scalars = {**from_csv, **scalars}
    loggers = ((config or {}).get("trainer") or {}).get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        name = str(logger.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(logger, dict) else ""
        if name and name not in READABLE_LOGGERS:
            unreadable.append(f"curves logged with {name}: only {' and '.join(READABLE_LOGGERS)} logs are read")
    if not scalars and not unreadable:
        unreadable.append(f"no curves: {run_dir} holds no TensorBoard event files and no metrics.csv")
    return scalars, seconds, unreadable


def read_metrics_csv(path: Path) -> tuple[Scalars, list[str]]:
    """The scalars of a ``CSVLogger`` ``metrics.csv`` (``epoch``, ``step`` and one column per logged key).

    A value logged twice at one step (a resumed run) keeps the later row. Epochs count from 1, as in `read_scalars`.

    Returns:
        The scalars, and the columns (or the file) that could not be read.
    """
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return {}, [f"{path}: cannot be read as CSV ({error})"]
    if rows and ("step" not in rows[0] or "epoch" not in rows[0]):
        return {}, [f"{path}: no 'epoch' and 'step' columns; is it a Lightning CSVLogger metrics.csv?"]
    by_tag: dict[str, dict[int, tuple[int, float]]] = {}
    bad: dict[str, int] = {}
    epoch = 0
    for row in rows:
        try:
            step = int(float(row["step"]))
            epoch = int(float(row["epoch"])) if row.get("epoch") not in (None, "") else epoch
        except ValueError:
            bad["step/epoch"] = bad.get("step/epoch", 0) + 1
            continue
        for tag, text in row.items():
            if tag in ("epoch", "step") or text in (None, ""):
                continue
            try:
                value = float(text)
            except ValueError:
                bad[tag] = bad.get(tag, 0) + 1
                continue
            by_tag.setdefault(str(tag), {})[step] = (epoch + 1, value)
    scalars = {tag: [values[step] for step in sorted(values)] for tag, values in by_tag.items()}
    problems = [f"{path}: column {tag!r}: {count} value(s) are not numbers" for tag, count in sorted(bad.items())]
    return scalars, problems


def read_events(run_dir: Path) -> tuple[Scalars, float | None]:
    """The scalars of the TensorBoard event files, and the wall time from the first to the last logged scalar.

    Both are empty (``{}``, ``None``) for a folder without event files.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(run_dir.glob("events.out.tfevents.*")):
        return {}, None
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags().get("scalars", [])
    epochs = sorted((e.step, int(e.value)) for e in accumulator.Scalars("epoch")) if "epoch" in tags else []

    def epoch_at(step: int) -> int:
        current = 0
        for logged_step, epoch in epochs:
            if logged_step > step:
                break
            current = epoch
        return current + 1

    events = {tag: accumulator.Scalars(tag) for tag in tags}
    times = [e.wall_time for values in events.values() for e in values]
    scalars = {
        tag: [(epoch_at(e.step), float(e.value)) for e in values] for tag, values in events.items() if tag != "epoch"
    }
    return scalars, (max(times) - min(times)) if times else None


def assign_roles(runs: Sequence[Run]) -> list[Run]:
    """Marks teachers and orders runs as teacher(s), scratch students, distilled students.

    A run is a teacher when another run's teacher checkpoint lies in its folder. Runs without a teacher that no
    one distilled from are scratch baselines; runs with a teacher are distilled.

    Returns:
        The runs in report order.
    """
    folders = {run.path.resolve(): run for run in runs}
    for run in runs:
        for source in run.teacher_checkpoints:
            owner = folders.get(source.resolve().parent.parent)
            if owner is not None and owner.teacher_checkpoint is None:
                owner.role = "teacher"
    order = {"teacher": 0, "scratch": 1, "distilled": 2}
    return sorted(runs, key=lambda r: order[r.role])


def build_datamodule(run: Run, data_dir: str | Path | None = None) -> Any:
    """The run's datamodule from its ``config.yaml`` (``data_dir`` replaced when given)."""
    data = run.config.get("data") or {}
    class_path = data.get("class_path")
    if not class_path:
        raise RunError(f"{run.path}/config.yaml has no data.class_path")
    module_path, _, class_name = str(class_path).rpartition(".")
    datamodule_class = getattr(importlib.import_module(module_path), class_name)
    init_args = dict(data.get("init_args") or {})
    if data_dir is not None:
        init_args["data_dir"] = str(data_dir)
    return datamodule_class(**init_args)


def run_folders_by_data(root: str | Path) -> list[list[Path]]:
    """The finished run folders under ``root`` (one level down), grouped by the data they were trained on.

    Runs on the same data (same datamodule class and arguments) can be compared in one report; the groups are in
    folder-name order.
    """
    groups: dict[str, list[Path]] = {}
    for folder in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        config = folder / "config.yaml"
        if not config.is_file() or not any((folder / "checkpoints" / n).is_file() for n in CHECKPOINT_NAMES):
            continue
        data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
        groups.setdefault(yaml.safe_dump(data, sort_keys=True), []).append(folder)
    return list(groups.values())
