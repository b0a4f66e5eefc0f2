"""`VisionDistillCLI`: LightningCLI with visiondistill's defaults and run folders that are written once.

Any task module, any datamodule; the folder rules are `visiondistill.cli.run_folders`, and ``fit`` writes a
``last.ckpt`` at every epoch (`LastCheckpoint`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from visiondistill.cli.last_checkpoint import LastCheckpoint
from visiondistill.cli.run_folders import (
    FitPlan,
    LoggerFolder,
    RunFolderError,
    RunFolderExistsError,
    eval_folder,
    plan_fit,
    resolve_eval_checkpoint,
)
from visiondistill.models.checkpoints import CheckpointError

# A frozen teacher is in eval mode on purpose; Lightning's generic warning about it would only confuse.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

#: Task arguments that shape the student, named when a checkpoint does not fit the config's.
ARCHITECTURE_HPARAMS = ("student", "num_classes", "num_keypoints", "in_channels")
#: Subcommands that evaluate a checkpoint and write into ``<run>/eval/…``.
EVAL_SUBCOMMANDS = ("validate", "test", "predict")


class VisionDistillCLI(LightningCLI):
    """LightningCLI with visiondistill's defaults: any task module, any datamodule, one write-once folder per run.

    Before anything is built, ``fit`` is checked against its run folder (`plan_fit`: a new run needs a folder that
    holds none; ``--ckpt_path last`` resumes the folder's ``last.ckpt``), and ``validate``/``test``/``predict`` are
    pointed at a new ``<run>/eval/<subcommand>-<checkpoint stem>[-N]/`` folder (their logger, config and the
    explanation callbacks' maps go there). The checkpoint's task and student architecture are checked against the
    config's model before Lightning loads it. ``fit`` gets a `LastCheckpoint`.

    Attributes:
        fit_plan: What ``fit`` does to its run folder (``None`` for other subcommands).
        eval_dir: The folder of a ``validate``/``test``/``predict`` (``None`` when its logger has no folder).
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        self.fit_plan: FitPlan | None = None
        self.eval_dir: Path | None = None
        self._checkpoint: tuple[Path, Mapping[str, Any]] | None = None
        super().__init__(
            subclass_mode_model=True,
            subclass_mode_data=True,
            # Never overwrite: each command saves its config under a name of its own (the folder checks see to it).
            save_config_kwargs={"overwrite": False},
            args=list(args) if args is not None else None,
            run=run,
            auto_configure_optimizers=False,
        )

    # -- before anything is built: the run folder -------------------------------------------------------------------

    def _parse_ckpt_path(self) -> None:
        # LightningCLI's own step (before `before_instantiate_classes`) loads --ckpt_path to merge the checkpoint's
        # hyper-parameters into the config; the run-folder rules resolve and check the path first, so a truncated file
        # or another task's checkpoint is refused by name instead of failing inside that merge. A resumed fit runs the
        # config it is given (a different student is refused in `before_fit`); evaluations take the checkpoint's.
        subcommand = self.config.get("subcommand")
        self._apply_run_folder_rules(subcommand)
        if self._checkpoint is not None:
            check_task_class(self._checkpoint[1], self._checkpoint[0], self.config[subcommand])
        if subcommand != "fit":
            super()._parse_ckpt_path()

    def _apply_run_folder_rules(self, subcommand: str | None) -> None:
        """Applies the run-folder rules to the parsed config of ``fit``/``validate``/``test``/``predict``."""
        if subcommand not in ("fit", *EVAL_SUBCOMMANDS):
            return
        config = self.config[subcommand]
        logger, folder = _run_folder(config)
        ckpt_path = config.get("ckpt_path")
        if subcommand == "fit":
            try:
                plan = plan_fit(folder, ckpt_path, logger)
            except RunFolderExistsError:
                if not _other_rank():  # DDP ranks > 0 run this command again once rank 0 has made the folder
                    raise
                plan = FitPlan(folder)
            config["ckpt_path"] = str(plan.ckpt_path) if plan.ckpt_path is not None else None
            self.save_config_kwargs["config_filename"] = plan.config_name
            self.fit_plan = plan
            if plan.checkpoint is not None:
                self._checkpoint = (plan.ckpt_path, plan.checkpoint)
            return
        resolved = resolve_eval_checkpoint(subcommand, ckpt_path, folder)
        if resolved is None and not _student_has_weights(config):
            run = folder if folder is not None else "runs/<task>/<run>"
            where = f"{run}/checkpoints/best.ckpt"
            raise RunFolderError(
                f"`visiondistill {subcommand}` needs trained weights: add --ckpt_path {where} (or --ckpt_path best / "
                "last for the config's own run folder); without one it would evaluate an untrained student"
            )
        self._checkpoint = resolved
        config["ckpt_path"] = str(resolved[0]) if resolved is not None else None
        trainer = config["trainer"]
        if logger is None and trainer.get("logger") is not False:
            return  # Lightning's default logger opens a new version_<N> folder of its own
        target = eval_folder(subcommand, resolved[0] if resolved else None, folder or Path(os.getcwd()))
        if logger is not None:
            logger.pin(target)
        else:
            trainer["default_root_dir"] = str(target)
        self.eval_dir = target

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if self.subcommand == "fit" and config.get("enable_checkpointing", True) is not False:
            configured = list(config.get("callbacks") or []) + list(callbacks)
            if not any(isinstance(cb, LastCheckpoint) for cb in configured):
                if not any(isinstance(cb, ModelCheckpoint) for cb in configured):
                    callbacks.append(ModelCheckpoint())  # what Lightning adds when none is given
                callbacks.append(LastCheckpoint())  # after every ModelCheckpoint: it saves their updated state
        return super()._instantiate_trainer(config, callbacks)

    # -- before Lightning loads the checkpoint ------------------------------------------------------------------------

    def before_fit(self) -> None:
        """Checks the checkpoint against the model; keeps ``best.ckpt``'s name; hides a killed run's extra events."""
        self._check_checkpoint()
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                # The run folder is this run's alone, so best.ckpt is replaced rather than joined by best-v1.ckpt.
                callback._enable_version_counter = False
        plan = self.fit_plan
        if plan is None or not plan.resume_in_place:
            return
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and logger._experiment is None and plan.purge_step is not None:
                # TensorBoard hides the events at and after this step that the stopped run logged after last.ckpt
                # (its writer is made at the first log, so setting the argument now is in time).
                if logger._kwargs.get("purge_step") is None:
                    logger._kwargs["purge_step"] = plan.purge_step
                logger._default_hp_metric = False  # the first run logged its placeholder hp_metric at step 0
        rank_zero_info(f"Resuming {plan.folder} from {plan.ckpt_path} (config of this command: {plan.config_name})")

    def before_validate(self) -> None:
        """Checks the checkpoint against the model."""
        self._check_checkpoint()
        if self.eval_dir is not None:
            rank_zero_info(f"visiondistill validate: writing to {self.eval_dir}")

    def before_test(self) -> None:
        """Checks the checkpoint against the model."""
        self._check_checkpoint()
        if self.eval_dir is not None:
            rank_zero_info(f"visiondistill test: writing to {self.eval_dir}")

    def before_predict(self) -> None:
        """Checks the checkpoint against the model."""
        self._check_checkpoint()

    def _check_checkpoint(self) -> None:
        if self._checkpoint is not None:
            check_checkpoint_fits(self._checkpoint[1], self._checkpoint[0], self.model)


def check_task_class(checkpoint: Mapping[str, Any], path: Path, config: Any) -> None:
    """Refuses a visiondistill checkpoint written by another task module than the config's ``model.class_path``.

    Raises:
        CheckpointError: Naming the file, the task module that wrote it and the config's.
    """
    from visiondistill.reporting.loader import import_task_class, recorded_class_path

    try:
        configured = str(config["model"]["class_path"])
    except (KeyError, TypeError):
        return
    configured_class = import_task_class(configured, "the config's model.class_path")
    recorded_class = import_task_class(recorded_class_path(checkpoint, path), path)
    if recorded_class is not configured_class:
        raise CheckpointError(
            f"{path} was written by {recorded_class.__name__}, but the config builds a {configured_class.__name__}; "
            f"give a checkpoint of a {configured_class.__name__} run, or the config the checkpoint was trained with"
        )


def check_checkpoint_fits(checkpoint: Mapping[str, Any], path: Path, model: Any) -> None:
    """Refuses a checkpoint of another task module or another student architecture than ``model``'s.

    Only visiondistill task modules (a ``student`` and recorded hyper-parameters) are checked; connectors
    (``distill_adapters``) are made in ``setup`` and checked by Lightning when it loads them.

    Raises:
        CheckpointError: Naming the file, what it holds and what the config builds.
    """
    from visiondistill.reporting.loader import import_task_class, recorded_class_path

    student = getattr(model, "student", None)
    if student is None:
        return
    recorded = recorded_class_path(checkpoint, path)
    recorded_class = import_task_class(recorded, path)
    if recorded_class is not type(model):
        raise CheckpointError(
            f"{path} was written by {recorded_class.__name__}, but the config builds a {type(model).__name__}; give "
            f"a checkpoint of a {type(model).__name__} run, or the config the checkpoint was trained with"
        )
    weights = checkpoint.get("state_dict") or {}
    saved = {k.removeprefix("student."): v for k, v in weights.items() if k.startswith("student.")}
    own = student.state_dict()
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    resized = sorted(k for k in set(own) & set(saved) if tuple(own[k].shape) != tuple(saved[k].shape))
    if not (missing or unexpected or resized):
        return
    details = [
        f"{len(keys)} {what} (e.g. {keys[0]})"
        for what, keys in (
            ("weights missing", missing),
            ("unexpected weights", unexpected),
            ("weights of another shape", resized),
        )
        if keys
    ]
    recorded_hparams = checkpoint.get("hyper_parameters") or {}
    configured_hparams = getattr(model, "hparams", {})
    differences = [
        f"{key} {_spec_text(recorded_hparams.get(key))} in the checkpoint, {_spec_text(configured_hparams.get(key))} "
        "in the config"
        for key in ARCHITECTURE_HPARAMS
        if _spec_text(recorded_hparams.get(key)) != _spec_text(configured_hparams.get(key))
    ]
    raise CheckpointError(
        f"{path} holds another student than the config builds ({'; '.join(details)}): "
        f"{'; '.join(differences) or 'the recorded arguments agree, the weights do not'}; use the config the run was "
        "trained with, or start a new run without --ckpt_path"
    )


def _spec_text(spec: Any) -> str:
    if isinstance(spec, Mapping):
        return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items() if v is not None) + "}"
    if hasattr(spec, "__dict__"):
        return _spec_text({k: v for k, v in vars(spec).items() if not k.startswith("_")})
    return repr(spec)


def _run_folder(config: Any) -> tuple[LoggerFolder | None, Path | None]:
    """The folder logger of a subcommand's config and its run folder (``default_root_dir`` with ``logger: false``)."""
    trainer = config["trainer"]
    loggers = trainer.get("logger")
    if loggers is False:
        return None, Path(trainer.get("default_root_dir") or os.getcwd())
    first, flag = loggers, "--trainer.logger.init_args"
    if isinstance(loggers, list):
        first, flag = (loggers[0] if loggers else None), "--trainer.logger[0].init_args"
    logger = LoggerFolder.from_config(first, flag) if first not in (None, True) else None
    return logger, logger.folder if logger is not None else None


def _student_has_weights(config: Any) -> bool:
    """Whether the config's student loads weights of its own (``model.init_args.student.checkpoint``)."""
    try:
        student = config["model"]["init_args"]["student"]
    except (KeyError, TypeError):
        return False
    checkpoint = student.get("checkpoint") if isinstance(student, Mapping) else getattr(student, "checkpoint", None)
    return bool(checkpoint)


def _other_rank() -> bool:
    """Whether this process is a DDP rank other than global rank 0 (launched with its rank in the environment)."""
    return any(int(os.environ.get(key, "0") or 0) > 0 for key in ("RANK", "LOCAL_RANK", "NODE_RANK"))
