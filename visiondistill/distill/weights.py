"""Weights of distillation terms that change during training: plain schedules and an adaptive rule.

Both callbacks address distillation callbacks by their log name (``kd``, ``attention_transfer``,
``saliency_alignment`` …) and never replace the weight a user configured: each sets its *factor* on a callback
through `DistillationCallback.scale_weight`, and the callback's ``weight`` becomes ``base_weight × Π factors`` (so a
`WeightSchedule` and an `AdaptiveDistillationWeights` on the same callback compose). A controller's factors are
keyed by its ``state_key``, which is built from its configuration, so two controllers of one class with different
configurations keep separate factors and separate checkpointed state. The weight applied in a step is logged as
``train/weight/<name>`` (``effective_weight``, so DKD's own warm-up is included).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from visiondistill.core.callback import DistillationCallback, distillation_callbacks
from visiondistill.core.config import spec_from
from visiondistill.core.errors import ConfigError

ScheduleShape = Literal["linear", "cosine"]
ScheduleUnit = Literal["epoch", "step"]


def _ramp(x: float, shape: str) -> float:
    x = min(max(x, 0.0), 1.0)
    return x if shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * x))


@dataclasses.dataclass
class ScheduleSpec:
    """A factor on one callback's weight over training time ``t`` (epochs or optimizer steps).

    ``factor(t)``, with ``r(x) = x`` (linear) or ``(1 − cos πx) / 2`` (cosine) and ``x`` clipped to [0, 1]:

    - warm-up, ``t < warmup``: ``start + (1 − start) · r(t / warmup)``;
    - decay, ``t ≥ decay_start``: ``1 + (final − 1) · r((t − decay_start) / (decay_end − decay_start))``;
    - otherwise ``1``.

    Attributes:
        warmup: Length of the warm-up (0: none).
        start: Factor at ``t = 0``.
        decay_start: Start of the decay (``None``: no decay); at least ``warmup``.
        decay_end: End of the decay; ``None`` is the end of training (``max_epochs`` or the number of steps).
        final: Factor at and after ``decay_end``.
        shape: ``"linear"`` or ``"cosine"``, for both ramps.

    Example::

        >>> spec = ScheduleSpec(warmup=2, decay_start=6, decay_end=10, final=0.2)
        >>> [round(spec.factor(t), 3) for t in (0, 1, 2, 6, 8, 10, 12)]
        [0.0, 0.5, 1.0, 1.0, 0.6, 0.2, 0.2]
    """

    warmup: float = 0.0
    start: float = 0.0
    decay_start: float | None = None
    decay_end: float | None = None
    final: float = 0.0
    shape: ScheduleShape = "linear"

    def __post_init__(self) -> None:
        for key in ("warmup", "start", "final"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"schedule {key} must be a finite number >= 0, got {value!r}")
        if self.shape not in ("linear", "cosine"):
            raise ConfigError(f"schedule shape must be 'linear' or 'cosine', got {self.shape!r}")
        if self.decay_start is not None and self.decay_start < self.warmup:
            raise ConfigError(f"schedule decay_start ({self.decay_start}) must be >= warmup ({self.warmup})")
        if self.decay_end is not None and (self.decay_start is None or self.decay_end <= self.decay_start):
            raise ConfigError(
                f"schedule decay_end ({self.decay_end}) needs a decay_start before it, got {self.decay_start}"
            )

    def factor(self, t: float, end: float | None = None) -> float:
        """The factor at time ``t``; ``end`` stands for a ``decay_end`` of ``None`` (the end of training)."""
        if self.warmup > 0 and t < self.warmup:
            return self.start + (1.0 - self.start) * _ramp(t / self.warmup, self.shape)
        if self.decay_start is not None and t >= self.decay_start:
            decay_end = self.decay_end if self.decay_end is not None else end
            if decay_end is None or decay_end <= self.decay_start:
                return self.final
            return 1.0 + (self.final - 1.0) * _ramp((t - self.decay_start) / (decay_end - self.decay_start), self.shape)
        return 1.0


class _WeightController(Callback):
    """Shared machinery: find the named distillation callbacks, set factors on them, log the weights."""

    def __init__(self) -> None:
        super().__init__()
        self._targets: dict[str, DistillationCallback] = {}

    def controlled_names(self) -> list[str]:
        """Log names of the distillation callbacks whose weight this controller sets."""
        raise NotImplementedError

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._targets = self._resolve(trainer)

    def _resolve(self, trainer: pl.Trainer) -> dict[str, DistillationCallback]:
        by_name = {callback.name: callback for callback in distillation_callbacks(trainer)}
        unknown = [name for name in self.controlled_names() if name not in by_name]
        if unknown:
            raise ConfigError(
                f"{type(self).__name__}: no distillation callback named {', '.join(map(repr, unknown))} on the "
                f"trainer; the distillation callbacks are named: {', '.join(map(repr, by_name)) or '(none)'}"
            )
        return {name: by_name[name] for name in self.controlled_names()}

    def set_factor(self, name: str, factor: float) -> None:
        """Sets this controller's factor on a callback (`DistillationCallback.scale_weight`)."""
        self._targets[name].scale_weight(self.state_key, factor)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # One logger per name: the first controller on the trainer logs every controlled callback's weight.
        controllers = [cb for cb in trainer.callbacks if isinstance(cb, _WeightController)]
        if controllers[0] is not self:
            return
        callbacks = {name: cb for controller in controllers for name, cb in controller._targets.items()}
        for name, callback in callbacks.items():
            weight = callback.effective_weight(trainer)
            pl_module.log(f"train/weight/{name}", float(weight), on_step=True, on_epoch=False, batch_size=1)


class WeightSchedule(_WeightController):
    """Warm-up and decay schedules for the weights of distillation callbacks, addressed by their log name.

    Before every training batch each named callback's weight is set to ``configured weight × factor(t)``
    (`ScheduleSpec`), ``t`` being the fractional epoch (``epoch + batch / batches per epoch``) or the optimizer
    step. The schedule depends on ``t`` alone, so it is the same on every DDP rank and after a resume.

    Args:
        schedules: Callback name → `ScheduleSpec` (or a mapping of its fields).
        unit: ``"epoch"`` or ``"step"``: what ``t`` and the lengths in the specs count.

    Raises:
        TypeError: On unknown keys in a spec (naming them).
        ValueError: On bad spec values, an unknown unit, or (at fit start) a name no distillation callback has.

    Example::

        >>> schedule = WeightSchedule({"kd": {"decay_start": 5, "final": 0.1}, "attention_transfer": {"warmup": 2}})
        >>> schedule.schedules["attention_transfer"].factor(1.0)
        0.5
    """

    def __init__(self, schedules: Mapping[str, ScheduleSpec | Mapping[str, Any]], unit: ScheduleUnit = "epoch") -> None:
        super().__init__()
        if unit not in ("epoch", "step"):
            raise ConfigError(f"WeightSchedule: unit must be 'epoch' or 'step', got {unit!r}")
        if not schedules:
            raise ConfigError("WeightSchedule: give at least one schedule, e.g. {'kd': {'warmup': 2}}")
        self.schedules = {
            str(name): spec_from(ScheduleSpec, spec, f"WeightSchedule[{name!r}]", expected="a mapping of fields")
            for name, spec in schedules.items()
        }
        self.unit = unit

    @override
    def controlled_names(self) -> list[str]:
        return list(self.schedules)

    @property
    @override
    def state_key(self) -> str:
        # the source of this schedule's factors on the callbacks: two schedules with other specs stay apart
        specs = {name: dataclasses.asdict(spec) for name, spec in self.schedules.items()}
        return self._generate_state_key(schedules=specs, unit=self.unit)

    def _end(self, trainer: pl.Trainer) -> float | None:
        if self.unit == "epoch":
            return float(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else None
        if trainer.max_steps and trainer.max_steps > 0:
            return float(trainer.max_steps)
        steps = trainer.estimated_stepping_batches
        return float(steps) if math.isfinite(steps) else None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        open_ended = [n for n, s in self.schedules.items() if s.decay_start is not None and s.decay_end is None]
        if open_ended and self._end(trainer) is None:
            raise ConfigError(
                f"WeightSchedule: the decay of {open_ended} runs to the end of training, but the trainer sets no "
                f"max_{'epochs' if self.unit == 'epoch' else 'steps'}; give decay_end"
            )

    def time(self, trainer: pl.Trainer, batch_idx: int) -> float:
        """The schedule's clock: fractional epoch or optimizer step."""
        if self.unit == "step":
            return float(trainer.global_step)
        batches = trainer.num_training_batches
        fraction = batch_idx / batches if isinstance(batches, int | float) and math.isfinite(batches) else 0.0
        return trainer.current_epoch + fraction

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        t, end = self.time(trainer, batch_idx), self._end(trainer)
        for name, spec in self.schedules.items():
            self.set_factor(name, spec.factor(t, end))


class AdaptiveDistillationWeights(_WeightController):
    """Adjusts the weights of distillation callbacks from measured signals, by a bounded multiplicative rule.

    Each named callback carries a factor ``f`` (1 at the start; its weight is ``configured weight × f``). After
    every validation of ``fit`` (not the sanity check), the rule reads three signals and updates the factors:

    1. **Agreement lags → raise** ``raise_on_lag``: ``agreement_metric`` (higher is better, e.g.
       ``val/saliency/pearson`` from `GradCAMCallback`, ``val/attention/at_cosine/<stage>`` from
       `FeatureMapCallback`) is compared with its best value so far. When it has not beaten the best by more than
       ``min_delta`` for ``patience`` validations in a row, each factor is multiplied by ``up`` (and the count
       restarts). Once it reaches ``agreement_target`` (when given) nothing is raised.
    2. **The student catches up → decay** ``decay_on_progress``: each time ``task_metric`` (e.g. ``val/acc_top1``,
       ``val/miou``; ``task_mode`` says which way is better) beats its best by more than ``min_delta``, each factor
       is multiplied by ``down`` — the student leans less on the teacher as it improves.
    3. **Loss balance** ``balance``: the share ``term / total loss`` of each named term, averaged over the
       training steps since the last validation (from ``train/distill/<name>`` and ``train/loss``), is kept
       within ``[min_share, max_share]``: above it the factor is multiplied by ``down``, below it by ``up``.

    Factors are clipped to ``[min_factor, max_factor]``. The first value of a metric only sets its best. A signal
    that is not logged (no `GradCAMCallback`, another task's metric) leaves its factors alone, with one warning.
    The rule runs on global rank zero (saliency metrics are logged there only) and its result is broadcast, so
    every DDP rank applies the same weights. Its state (factors, bests, counters, share sums) is checkpointed and
    restored on resume.

    Args:
        raise_on_lag: Names of the callbacks raised while agreement lags (e.g. ``attention_transfer``).
        agreement_metric: The agreement signal.
        agreement_target: Agreement at which raising stops; ``None`` for none.
        patience: Validations without improvement before a raise.
        decay_on_progress: Names of the callbacks decayed as the task metric improves (e.g. ``kd``).
        task_metric: The task signal.
        task_mode: ``"max"`` or ``"min"``: which way ``task_metric`` improves.
        balance: Names of the callbacks whose share of the total loss is kept in bounds.
        min_share: Lower bound of a share.
        max_share: Upper bound of a share.
        up: Multiplier of a raise (> 1).
        down: Multiplier of a decay (in (0, 1)).
        min_factor: Lowest factor.
        max_factor: Highest factor.
        min_delta: Improvement that counts as one.

    Raises:
        ValueError: On bad multipliers, bounds or modes, when no name is given, or (at fit start) for a name no
            distillation callback has.

    Example::

        >>> rule = AdaptiveDistillationWeights(raise_on_lag=["attention_transfer"], decay_on_progress=["kd"])
        >>> rule.update({"val/saliency/pearson": 0.5, "val/acc_top1": 0.6})
        {'attention_transfer': 1.0, 'kd': 1.0}
        >>> rule.update({"val/saliency/pearson": 0.4, "val/acc_top1": 0.7})
        {'attention_transfer': 1.25, 'kd': 0.8}
    """

    def __init__(
        self,
        raise_on_lag: Sequence[str] = (),
        agreement_metric: str = "val/saliency/pearson",
        agreement_target: float | None = None,
        patience: int = 1,
        decay_on_progress: Sequence[str] = (),
        task_metric: str = "val/acc_top1",
        task_mode: Literal["max", "min"] = "max",
        balance: Sequence[str] = (),
        min_share: float = 0.0,
        max_share: float = 0.5,
        up: float = 1.25,
        down: float = 0.8,
        min_factor: float = 0.1,
        max_factor: float = 10.0,
        min_delta: float = 0.0,
    ) -> None:
        super().__init__()
        self.raise_on_lag, self.decay_on_progress = list(raise_on_lag), list(decay_on_progress)
        self.balance = list(balance)
        if not (self.raise_on_lag or self.decay_on_progress or self.balance):
            raise ConfigError(
                "AdaptiveDistillationWeights: name at least one callback in raise_on_lag, decay_on_progress or balance"
            )
        if not up > 1:
            raise ConfigError(f"AdaptiveDistillationWeights: up must be > 1, got {up}")
        if not 0 < down < 1:
            raise ConfigError(f"AdaptiveDistillationWeights: down must be in (0, 1), got {down}")
        if not 0 < min_factor <= 1 <= max_factor:
            raise ConfigError(
                f"AdaptiveDistillationWeights: need 0 < min_factor <= 1 <= max_factor, got {min_factor}, {max_factor}"
            )
        if not 0 <= min_share < max_share:
            raise ConfigError(
                f"AdaptiveDistillationWeights: need 0 <= min_share < max_share, got {min_share}, {max_share}"
            )
        if task_mode not in ("max", "min"):
            raise ConfigError(f"AdaptiveDistillationWeights: task_mode must be 'max' or 'min', got {task_mode!r}")
        if int(patience) < 1:
            raise ConfigError(f"AdaptiveDistillationWeights: patience must be >= 1, got {patience}")
        self.agreement_metric, self.agreement_target, self.patience = agreement_metric, agreement_target, int(patience)
        self.task_metric, self.task_mode = task_metric, task_mode
        self.min_share, self.max_share = float(min_share), float(max_share)
        self.up, self.down = float(up), float(down)
        self.min_factor, self.max_factor, self.min_delta = float(min_factor), float(max_factor), float(min_delta)
        self.factors = {name: 1.0 for name in self.controlled_names()}
        self.best_agreement: float | None = None
        self.best_task: float | None = None
        self.stalls = 0
        self.share_sums = {name: 0.0 for name in self.balance}
        self.share_steps = 0
        self.updates = 0
        self._warned: set[str] = set()
        # This epoch's shares, summed on the loss's device (float64): folded into `share_sums` at validation, so a
        # training step never waits for the device (`_fold_shares`).
        self._step_shares: dict[str, Tensor] = {}
        self._step_count: Tensor | None = None

    @override
    def controlled_names(self) -> list[str]:
        return list(dict.fromkeys(self.raise_on_lag + self.decay_on_progress + self.balance))

    @property
    @override
    def state_key(self) -> str:
        # Built from what the rule drives and reads, not from its changing state: two instances with other
        # configurations keep their own state in one checkpoint (and their own factors on the callbacks).
        return self._generate_state_key(
            raise_on_lag=self.raise_on_lag,
            agreement_metric=self.agreement_metric,
            decay_on_progress=self.decay_on_progress,
            task_metric=self.task_metric,
            balance=self.balance,
        )

    # -- the rule (pure: no trainer) --------------------------------------------------------------

    def update(self, metrics: Mapping[str, float], shares: Mapping[str, float] | None = None) -> dict[str, float]:
        """Applies the rule once, given the signals of one validation; returns the new factors.

        Args:
            metrics: Logged scalars by name (``trainer.callback_metrics``); missing signals are skipped.
            shares: Mean share of the total loss of each name in ``balance``.

        Returns:
            The factor of every controlled callback.
        """
        changes = dict.fromkeys(self.factors, 1.0)
        agreement = _scalar(metrics.get(self.agreement_metric))
        if self.raise_on_lag and agreement is not None:
            if self.best_agreement is None or agreement > self.best_agreement + self.min_delta:
                self.best_agreement, self.stalls = agreement, 0
            elif self.agreement_target is not None and agreement >= self.agreement_target:
                self.stalls = 0
            else:
                self.stalls += 1
                if self.stalls >= self.patience:
                    self.stalls = 0
                    for name in self.raise_on_lag:
                        changes[name] *= self.up
        task = _scalar(metrics.get(self.task_metric))
        if self.decay_on_progress and task is not None:
            task = task if self.task_mode == "max" else -task
            if self.best_task is not None and task > self.best_task + self.min_delta:
                for name in self.decay_on_progress:
                    changes[name] *= self.down
            if self.best_task is None or task > self.best_task:
                self.best_task = task
        for name, share in (shares or {}).items():
            if name in self.share_sums:
                changes[name] *= self.down if share > self.max_share else self.up if share < self.min_share else 1.0
        for name, change in changes.items():
            self.factors[name] = min(max(self.factors[name] * change, self.min_factor), self.max_factor)
        self.updates += 1
        return dict(self.factors)

    # -- Lightning hooks --------------------------------------------------------------------------

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After any restore: the factors of a resumed run are the checkpoint's.
        for name, factor in self.factors.items():
            self.set_factor(name, factor)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.balance:
            return
        metrics = trainer.callback_metrics  # this step's values (rank-local; rank zero's are the ones used)
        total = _double(metrics.get("train/loss_step", metrics.get("train/loss")))
        if total is None:
            self._warn_once("train/loss", "the total loss 'train/loss' is not logged; loss balance is skipped")
            return
        # Tensor arithmetic only (no float(), no branch on a value): a step with a total <= 0 counts for nothing.
        counted = total > 0
        safe_total = torch.where(counted, total, torch.ones_like(total))
        for name in self.balance:
            term = _double(metrics.get(f"train/distill/{name}_step", metrics.get(f"train/distill/{name}")))
            share = torch.zeros_like(total)
            if term is not None and self._targets[name].effective_weight(trainer) != 0:
                share = torch.where(counted, term.to(total.device).abs() / safe_total, share)
            previous = self._step_shares.get(name)
            self._step_shares[name] = share if previous is None else previous + share
        count = counted.to(total.dtype)
        self._step_count = count if self._step_count is None else self._step_count + count

    def _fold_shares(self) -> None:
        """Adds the shares summed on the device since the last fold to ``share_sums`` (one host sync)."""
        if self._step_count is not None:
            for name, value in self._step_shares.items():
                self.share_sums[name] += float(value)
            self.share_steps += int(self._step_count)
        self._step_shares, self._step_count = {}, None

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._fold_shares()
        if trainer.is_global_zero:
            metrics = trainer.callback_metrics
            for key, needed in ((self.agreement_metric, self.raise_on_lag), (self.task_metric, self.decay_on_progress)):
                if needed and key not in metrics:
                    self._warn_once(key, f"{key!r} is not logged; the factors it drives stay as they are")
            shares = {n: s / self.share_steps for n, s in self.share_sums.items()} if self.share_steps else {}
            self.update(metrics, shares)
        # Every rank calls the broadcast (outside the rank-zero branch) and adopts rank zero's state.
        self.load_state_dict(trainer.strategy.broadcast(self.state_dict(), src=0))
        self.share_sums = dict.fromkeys(self.balance, 0.0)
        self.share_steps = 0
        for name, factor in self.factors.items():
            self.set_factor(name, factor)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(f"AdaptiveDistillationWeights: {message}")

    # -- checkpointing ----------------------------------------------------------------------------

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Checkpoints written before the state key was configuration-based keep this state under the class name.
        states = checkpoint.get("callbacks") or {}
        legacy = type(self).__qualname__
        if self.state_key not in states and legacy in states:
            mine = [cb for cb in trainer.callbacks if isinstance(cb, AdaptiveDistillationWeights)]
            if len(mine) == 1:  # with several instances, which one owned it is unknown: leave it
                states[self.state_key] = states[legacy]

    @override
    def state_dict(self) -> dict[str, Any]:
        self._fold_shares()
        return {
            "factors": dict(self.factors),
            "best_agreement": self.best_agreement,
            "best_task": self.best_task,
            "stalls": self.stalls,
            "share_sums": dict(self.share_sums),
            "share_steps": self.share_steps,
            "updates": self.updates,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Names added to the configuration since the checkpoint start at factor 1; removed ones are dropped.
        saved = state_dict.get("factors", {})
        self.factors = {name: float(saved.get(name, 1.0)) for name in self.controlled_names()}
        self.best_agreement = state_dict.get("best_agreement", self.best_agreement)
        self.best_task = state_dict.get("best_task", self.best_task)
        self.stalls = int(state_dict.get("stalls", self.stalls))
        sums = state_dict.get("share_sums", {})
        self.share_sums = {name: float(sums.get(name, 0.0)) for name in self.balance}
        self.share_steps = int(state_dict.get("share_steps", self.share_steps))
        self._step_shares, self._step_count = {}, None
        self.updates = int(state_dict.get("updates", self.updates))


def _double(value: object) -> Tensor | None:
    """A logged scalar as a float64 tensor on its device (no host sync), or ``None`` when missing or not a scalar."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return None
        dtype = torch.float32 if value.device.type == "mps" else torch.float64  # MPS has no float64
        return value.detach().to(dtype).reshape(())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    return None


def _scalar(value: object) -> float | None:
    if isinstance(value, Tensor):
        return float(value.detach().cpu()) if value.numel() == 1 else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
