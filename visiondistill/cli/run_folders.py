"""Run folders that are written once: where each subcommand writes, and what a resume continues from.

A *run folder* is the logger's folder, ``<save_dir>/<name>/<version>`` (the shipped configs pin ``version: ""``, so
it is ``runs/<task>/<name>/``). The rules, which `VisionDistillCLI` applies before anything is built or written:

- A ``fit`` owns its folder. A second ``fit`` into a folder that already holds a run (``config.yaml``,
  ``checkpoints/``, event files …) is refused with `RunFolderExistsError`, which names the two ways out: resume with
  ``--ckpt_path last``, or give the new run another ``--trainer.logger.init_args.version`` (or ``name``).
- ``fit --ckpt_path last`` (or a checkpoint inside the folder) resumes into the same folder: the first run's
  ``config.yaml`` stays, the resumed command's config goes next to it as ``config-resume-<N>.yaml``, the checkpoints
  keep their names and TensorBoard drops the events a killed run logged after its last checkpoint (``purge_step``).
  A checkpoint from another folder starts a new run (a branch) in a folder that must not hold one yet.
- ``validate``, ``test`` and ``predict`` write into ``<run>/eval/<subcommand>-<checkpoint stem>[-<N>]/`` (``<run>``
  being the folder the checkpoint lies in, ``<run>/checkpoints/<stem>.ckpt``), never into the run's own events,
  config, checkpoints or saliency maps; a later evaluation of the same checkpoint gets ``-2``, ``-3`` …

Only folder loggers (`TensorBoardLogger`, `CSVLogger`) and ``logger: false`` (the run folder is then
``default_root_dir``) have run folders; with Lightning's default logger (``version_<N>`` folders), each ``fit`` gets a
new folder anyway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiondistill.core.errors import VisionDistillError
from visiondistill.models.checkpoints import CheckpointError, read_checkpoint

__all__ = [
    "EVAL_FOLDER",
    "FitPlan",
    "LoggerFolder",
    "RunFolderError",
    "RunFolderExistsError",
    "eval_folder",
    "holds_run",
    "plan_fit",
    "resolve_eval_checkpoint",
]

#: Sub-folder of a run folder that holds its evaluations (``validate``/``test``/``predict``).
EVAL_FOLDER = "eval"
#: Logger classes (by class name) whose folder is ``<save_dir>/<name>/<version>``.
FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")
#: Files and folders that only a training run writes: a folder holding any of them holds a run.
RUN_ARTEFACTS = ("config.yaml", "hparams.yaml", "metrics.csv", "checkpoints")
#: The file names ``--ckpt_path best`` and ``--ckpt_path last`` stand for, inside ``<run>/checkpoints/``.
NAMED_CHECKPOINTS = {"best": "best.ckpt", "last": "last.ckpt"}


class RunFolderError(VisionDistillError, ValueError):
    """A run folder or ``--ckpt_path`` that a command cannot use (the message names the folder or file and the fix)."""


class RunFolderExistsError(RunFolderError):
    """A ``fit`` into a folder that already holds a run (the message names it, how to resume, how to go elsewhere)."""


@dataclass
class LoggerFolder:
    """Where a folder logger writes: ``<save_dir>/<name>/<version>``, as its configuration says.

    Attributes:
        init_args: The logger's ``init_args`` in the parsed config (edited in place to redirect the logger).
        save_dir: Its ``save_dir``.
        name: Its ``name`` (``""`` or ``None``: no name level).
        version: Its ``version``: a string is the folder's name (``""``: none), an integer ``version_<N>``, ``None``
            the next free ``version_<N>`` (chosen by the logger).
        flag: The command-line prefix of its arguments (``--trainer.logger.init_args``), for messages.
    """

    init_args: Any
    save_dir: Path
    name: str | None
    version: str | int | None
    flag: str = "--trainer.logger.init_args"

    @classmethod
    def from_config(cls, logger: Any, flag: str = "--trainer.logger.init_args") -> LoggerFolder | None:
        """The folder of a logger's config entry (``class_path``/``init_args``), or ``None`` for other loggers."""
        class_path = str(_get(logger, "class_path") or "")
        init_args = _get(logger, "init_args")
        if class_path.rsplit(".", 1)[-1] not in FOLDER_LOGGERS or init_args is None:
            return None
        save_dir = _get(init_args, "save_dir")
        if save_dir is None:
            return None
        return cls(init_args, Path(str(save_dir)), _get(init_args, "name"), _get(init_args, "version"), flag)

    @property
    def root(self) -> Path:
        """``<save_dir>/<name>``: the parent of the version folders."""
        return self.save_dir / self.name if self.name else self.save_dir

    @property
    def folder(self) -> Path | None:
        """The run folder, or ``None`` while the version is left to the logger."""
        if self.version is None:
            return None
        return self.root / (self.version if isinstance(self.version, str) else f"version_{self.version}")

    def pin(self, folder: Path) -> None:
        """Points the logger at ``folder``: ``save_dir`` its grandparent, ``name`` its parent, ``version`` itself."""
        folder = Path(folder)
        self.save_dir, self.name, self.version = folder.parent.parent, folder.parent.name, folder.name
        _set(self.init_args, "save_dir", str(self.save_dir))
        _set(self.init_args, "name", self.name)
        _set(self.init_args, "version", self.version)


@dataclass
class FitPlan:
    """What a ``fit`` will do to its run folder.

    Attributes:
        folder: The run folder (``None`` while the logger picks a new ``version_<N>``).
        ckpt_path: The checkpoint to resume from (resolved to a file), or ``None``.
        checkpoint: That checkpoint, loaded (for the checks against the model), or ``None``.
        resume_in_place: The checkpoint lies in ``folder``: the run goes on in its own folder.
        config_name: The file the command's config is saved as (``config.yaml``, ``config-resume-<N>.yaml``).
        purge_step: The first step the resumed run logs; TensorBoard hides what a killed run logged from there on.
    """

    folder: Path | None
    ckpt_path: Path | None = None
    checkpoint: Mapping[str, Any] | None = field(default=None, repr=False)
    resume_in_place: bool = False
    config_name: str = "config.yaml"
    purge_step: int | None = None


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a training run: a config, checkpoints, hyper-parameters or logged events."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return any((folder / name).exists() for name in RUN_ARTEFACTS) or any(folder.glob("events.out.tfevents.*"))


def plan_fit(folder: Path | None, ckpt_path: str | None, logger: LoggerFolder | None = None) -> FitPlan:
    """Checks a ``fit`` against the write-once rule and resolves its ``--ckpt_path``.

    Args:
        folder: The run folder the config names (``None`` while the logger picks the version).
        ckpt_path: The ``--ckpt_path`` value: ``None``, ``"last"``, ``"best"`` or a file.
        logger: The folder logger, when there is one: a resume into another of its versions points it there.

    Returns:
        The plan.

    Raises:
        RunFolderExistsError: When a new run would write into a folder that already holds one.
        RunFolderError: When ``last``/``best`` names a checkpoint the folder does not have.
        CheckpointError: When the checkpoint file is missing or unreadable.
    """
    if ckpt_path is None:
        if folder is not None and holds_run(folder):
            raise RunFolderExistsError(_exists_message(folder, logger))
        return FitPlan(folder)
    if ckpt_path in NAMED_CHECKPOINTS:
        folder = folder if folder is not None else _latest_version(logger, NAMED_CHECKPOINTS[ckpt_path])
        path = folder / "checkpoints" / NAMED_CHECKPOINTS[ckpt_path]
        if not path.is_file():
            raise RunFolderError(_no_named_checkpoint(folder, ckpt_path, logger))
    else:
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"--ckpt_path {ckpt_path}: no such checkpoint file; resume a run with --ckpt_path last (its "
                "checkpoints/last.ckpt) or give the path of an existing .ckpt"
            )
    owner = run_of(path)
    if folder is None and logger is not None and owner is not None and owner.parent.resolve() == logger.root.resolve():
        folder = owner  # a version the logger would not pick by itself: resume there
    if logger is not None and folder is not None and logger.folder != folder:
        logger.pin(folder)
    checkpoint = read_checkpoint(path)
    if folder is not None and owner is not None and owner.resolve() == folder.resolve():
        return FitPlan(folder, path, checkpoint, True, _next_config_name(folder), _first_step(checkpoint))
    if folder is not None and holds_run(folder):  # a branch from another run's checkpoint must start a new folder
        raise RunFolderExistsError(_exists_message(folder, logger, branch_from=path))
    return FitPlan(folder, path, checkpoint)


def resolve_eval_checkpoint(
    subcommand: str, ckpt_path: str | None, folder: Path | None
) -> tuple[Path, Mapping[str, Any]] | None:
    """The checkpoint file a ``validate``/``test``/``predict`` evaluates.

    Args:
        subcommand: ``validate``, ``test`` or ``predict``.
        ckpt_path: The ``--ckpt_path`` value: ``None``, ``"best"``, ``"last"`` or a file.
        folder: The run folder the config names (where ``best``/``last`` are looked up).

    Returns:
        The file and its loaded contents, or ``None`` when no checkpoint is given.

    Raises:
        RunFolderError: When ``best``/``last`` is given but the run folder does not have it.
        CheckpointError: When the file does not exist or cannot be read.
    """
    if ckpt_path is None:
        return None
    if ckpt_path in NAMED_CHECKPOINTS:
        if folder is None:
            raise RunFolderError(
                f"--ckpt_path {ckpt_path}: the config's logger picks a new version folder, so there is no run folder "
                f"to take {NAMED_CHECKPOINTS[ckpt_path]} from; give the file: --ckpt_path <run>/checkpoints/"
                f"{NAMED_CHECKPOINTS[ckpt_path]}"
            )
        path = folder / "checkpoints" / NAMED_CHECKPOINTS[ckpt_path]
        if not path.is_file():
            raise RunFolderError(
                f"{folder}: no checkpoints/{NAMED_CHECKPOINTS[ckpt_path]} to {subcommand} (--ckpt_path {ckpt_path}); "
                f"train the run first (visiondistill fit --config …) or give a file: --ckpt_path PATH.ckpt"
            )
    else:
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"--ckpt_path {ckpt_path}: no such checkpoint file; give a checkpoint written by `visiondistill fit`, "
                "e.g. --ckpt_path runs/<task>/<run>/checkpoints/best.ckpt"
            )
    return path, read_checkpoint(path)  # a truncated file fails here, naming it, before anything is built


def eval_folder(subcommand: str, checkpoint: Path | None, fallback: Path) -> Path:
    """The new folder of one evaluation: ``<run>/eval/<subcommand>-<checkpoint stem>[-<N>]``.

    Args:
        subcommand: ``validate``, ``test`` or ``predict``.
        checkpoint: The evaluated checkpoint; ``<run>`` is the run folder it lies in (``<run>/checkpoints/``).
        fallback: ``<run>`` for a checkpoint outside any run folder (or none): the config's run folder.

    Returns:
        A folder that does not exist yet.
    """
    owner = run_of(checkpoint) if checkpoint is not None else None
    stem = _safe(checkpoint.stem) if checkpoint is not None else "weights"
    return _next_eval_folder((owner or fallback) / EVAL_FOLDER, f"{subcommand}-{stem}")


def run_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint lies in (``<run>/checkpoints/<file>``), or ``None`` when it lies elsewhere."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def _first_step(checkpoint: Mapping[str, Any]) -> int | None:
    """The logging step a run resumed from ``checkpoint`` starts at (Lightning's ``_batches_that_stepped``)."""
    loops = checkpoint.get("loops") or {}
    state = (loops.get("fit_loop") or {}).get("epoch_loop.state_dict") or {}
    step = state.get("_batches_that_stepped", checkpoint.get("global_step"))
    return int(step) if isinstance(step, int | float) else None


def _next_config_name(folder: Path) -> str:
    """``config-resume-<N>.yaml`` for the first ``N`` (from 1) that ``folder`` does not hold yet."""
    n = 1
    while (folder / f"config-resume-{n}.yaml").exists():
        n += 1
    return f"config-resume-{n}.yaml"


def _next_eval_folder(parent: Path, base: str) -> Path:
    """``parent/base``, else ``parent/base-2``, ``parent/base-3`` …: the first that does not exist."""
    candidate, n = parent / base, 2
    while candidate.exists():
        candidate, n = parent / f"{base}-{n}", n + 1
    return candidate


def _latest_version(logger: LoggerFolder | None, file_name: str) -> Path:
    """The newest ``version_<N>`` folder of an unpinned logger that holds ``checkpoints/<file_name>``."""
    if logger is None:
        raise RunFolderError(
            "--ckpt_path last needs a run folder, but the config has no TensorBoardLogger/CSVLogger with a save_dir; "
            "give the checkpoint file: --ckpt_path <run>/checkpoints/last.ckpt"
        )
    versions = [p for p in logger.root.glob("version_*") if re.fullmatch(r"version_\d+", p.name)]
    versions = [p for p in versions if (p / "checkpoints" / file_name).is_file()]
    if not versions:
        raise RunFolderError(
            f"{logger.root}: no version_<N>/checkpoints/{file_name} to resume from; start a new run without "
            "--ckpt_path, or give the checkpoint file: --ckpt_path PATH.ckpt"
        )
    return max(versions, key=lambda p: int(p.name.split("_")[1]))


def _exists_message(folder: Path, logger: LoggerFolder | None, branch_from: Path | None = None) -> str:
    flag = logger.flag if logger is not None else "--trainer.default_root_dir"
    other = f"{flag}.version=v2" if logger is not None else f"{flag}={folder.parent / (folder.name + '_2')}"
    has_last = (folder / "checkpoints" / "last.ckpt").is_file()
    lines = [f"{folder}: this run folder already holds a run, and a run folder is written once."]
    if branch_from is not None:
        lines[0] += f" (--ckpt_path {branch_from} lies in another folder, so this fit would start a new run here.)"
    if has_last:
        last = folder / "checkpoints" / "last.ckpt"
        lines.append(f"  - to continue that run where it stopped: add --ckpt_path last ({last})")
    else:
        lines.append("  - it has no checkpoints/last.ckpt to continue from (it stopped before its first epoch ended)")
    lines.append(f"  - to start a new run next to it: add {other} (or another name)")
    lines.append(f"  - or delete {folder} if nothing in it is worth keeping")
    return "\n".join(lines)


def _no_named_checkpoint(folder: Path, ckpt_path: str, logger: LoggerFolder | None) -> str:
    file_name = NAMED_CHECKPOINTS[ckpt_path]
    if not holds_run(folder):
        return (
            f"--ckpt_path {ckpt_path}: {folder} holds no run to resume; start it without --ckpt_path "
            f"(or give the checkpoint file: --ckpt_path PATH.ckpt)"
        )
    flag = logger.flag if logger is not None else "--trainer.default_root_dir"
    return (
        f"--ckpt_path {ckpt_path}: {folder}/checkpoints/{file_name} does not exist (the run stopped before its first "
        f"epoch ended); start a new run next to it with {flag}.version=v2, or delete {folder}"
    )


def _safe(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", stem) or "checkpoint"


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    if isinstance(node, Mapping):
        return node.get(key)
    return getattr(node, key, None)


def _set(node: Any, key: str, value: Any) -> None:
    if isinstance(node, dict):
        node[key] = value
    else:
        setattr(node, key, value)
