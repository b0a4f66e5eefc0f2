"""WeightSchedule and AdaptiveDistillationWeights: exact schedule values, the adaptive rule, logging and resume."""

from __future__ import annotations

import math
import types

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from visiondistill.distill import (
    AdaptiveDistillationWeights,
    AttentionTransfer,
    LogitDistillation,
    ScheduleSpec,
    WeightSchedule,
)
from visiondistill.models import ClassifierSpec
from visiondistill.tasks import ClassificationTask

# -- schedules ---------------------------------------------------------------------------------------


def test_linear_schedule_exact_values():
    spec = ScheduleSpec(warmup=4, start=0.2, decay_start=6, decay_end=10, final=0.5)
    expected = {0: 0.2, 1: 0.4, 2: 0.6, 3: 0.8, 4: 1.0, 5: 1.0, 6: 1.0, 7: 0.875, 8: 0.75, 10: 0.5, 20: 0.5}
    for t, value in expected.items():
        assert spec.factor(t) == pytest.approx(value, abs=1e-12), t


def test_cosine_schedule_exact_values():
    spec = ScheduleSpec(warmup=2, decay_start=4, final=0.0, shape="cosine")
    for t in (0.0, 0.5, 1.0, 1.5):
        assert spec.factor(t) == pytest.approx((1 - math.cos(math.pi * t / 2)) / 2, abs=1e-12)
    assert spec.factor(3.0) == 1.0
    # decay_end None runs to the end of training, given as `end`.
    for t in (4.0, 5.0, 6.0, 7.0, 8.0):
        assert spec.factor(t, end=8.0) == pytest.approx(1 - (1 - math.cos(math.pi * (t - 4) / 4)) / 2, abs=1e-12)
    assert spec.factor(9.0, end=8.0) == pytest.approx(0.0, abs=1e-12)


def test_schedule_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="warmup must be a finite number >= 0"):
        ScheduleSpec(warmup=-1)
    with pytest.raises(ValueError, match="shape must be 'linear' or 'cosine'"):
        ScheduleSpec(shape="step")
    with pytest.raises(ValueError, match=r"decay_start \(1\) must be >= warmup \(2\)"):
        ScheduleSpec(warmup=2, decay_start=1)
    with pytest.raises(ValueError, match="decay_end"):
        ScheduleSpec(decay_start=3, decay_end=2)
    with pytest.raises(TypeError, match=r"unknown keys \['warm_up'\]"):
        WeightSchedule({"kd": {"warm_up": 2}})
    with pytest.raises(ValueError, match="unit must be 'epoch' or 'step'"):
        WeightSchedule({"kd": {}}, unit="batch")


def make_task() -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(
        student=ClassifierSpec(name="test_resnet"), teacher=ClassifierSpec(name="test_efficientnet"), num_classes=4
    )


class WeightLog(pl.Callback):
    """The weight of each distillation callback as used in each training step."""

    def __init__(self, *callbacks) -> None:
        self.callbacks = callbacks
        self.weights: list[tuple[float, ...]] = []
        self.logged: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append(tuple(c.weight for c in self.callbacks))
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/weight/")})


def test_weight_schedule_in_training_by_step_and_by_epoch(tiny_loader, trainer_kwargs):
    kd, at = LogitDistillation(weight=2.0), AttentionTransfer(weight=10.0)
    schedule = WeightSchedule({"kd": {"warmup": 4}, "attention_transfer": {"decay_start": 0, "final": 0.5}}, "step")
    log = WeightLog(kd, at)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": -1, "max_steps": 6}, callbacks=[kd, at, schedule, log])
    trainer.fit(make_task(), tiny_loader)  # 4 batches per epoch, 6 steps
    assert [w[0] for w in log.weights] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])
    assert [w[1] for w in log.weights] == pytest.approx([10 * (1 - 0.5 * s / 6) for s in range(6)])
    assert [entry["train/weight/kd"] for entry in log.logged] == pytest.approx([w[0] for w in log.weights])

    kd = LogitDistillation(weight=1.0)
    log = WeightLog(kd)
    schedule = WeightSchedule({"kd": {"warmup": 2, "shape": "cosine"}})
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=[kd, schedule, log])
    trainer.fit(make_task(), tiny_loader)
    times = [e + b / 4 for e in range(2) for b in range(4)]
    assert [w[0] for w in log.weights] == pytest.approx([(1 - math.cos(math.pi * t / 2)) / 2 for t in times])
    # The configured weight is kept: a second fit starts from it again.
    assert kd.base_weight == 1.0 and kd.weight_factors == {schedule.state_key: pytest.approx(log.weights[-1][0])}


def test_unknown_callback_name_fails_at_fit_start(tiny_loader, trainer_kwargs):
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[LogitDistillation(), WeightSchedule({"kdd": {"warmup": 1}})])
    with pytest.raises(ValueError, match=r"no distillation callback named 'kdd'.*named: 'kd'"):
        trainer.fit(make_task(), tiny_loader)


# -- the adaptive rule on synthetic signals -----------------------------------------------------------


def test_agreement_lag_raises_after_patience_until_the_target():
    rule = AdaptiveDistillationWeights(raise_on_lag=["at"], patience=2, up=2.0, agreement_target=0.9)
    sequence = [0.5, 0.6, 0.6, 0.55, 0.7, 0.65, 0.6, 0.6, 0.95, 0.92, 0.91, 0.91]
    factors = [rule.update({"val/saliency/pearson": a})["at"] for a in sequence]
    # best 0.5, 0.6 (improved), stall 1, stall 2 → ×2, 0.7 improved, stall, stall → ×2, stall, 0.95 best,
    # then below best but above the target: never raised.
    assert factors == [1, 1, 1, 2, 2, 2, 4, 4, 4, 4, 4, 4]


def test_task_progress_decays_and_min_mode():
    rule = AdaptiveDistillationWeights(decay_on_progress=["kd"], down=0.5, min_factor=0.2, min_delta=0.01)
    factors = [rule.update({"val/acc_top1": m})["kd"] for m in (0.3, 0.5, 0.505, 0.6, 0.7, 0.9)]
    assert factors == pytest.approx([1, 0.5, 0.5, 0.25, 0.2, 0.2])  # 0.505 is within min_delta; clipped at 0.2
    rule = AdaptiveDistillationWeights(decay_on_progress=["kd"], task_metric="val/loss", task_mode="min", down=0.5)
    factors = [rule.update({"val/loss": m})["kd"] for m in (2.0, 1.5, 1.8, 1.0)]
    assert factors == pytest.approx([1, 0.5, 0.5, 0.25])


def test_loss_share_bounds_and_missing_signals():
    rule = AdaptiveDistillationWeights(balance=["kd", "at"], min_share=0.1, max_share=0.4, up=1.5, down=0.5)
    assert rule.update({}, {"kd": 0.6, "at": 0.05}) == pytest.approx({"kd": 0.5, "at": 1.5})
    assert rule.update({}, {"kd": 0.2, "at": 0.3}) == pytest.approx({"kd": 0.5, "at": 1.5})
    assert rule.update({}, {}) == pytest.approx({"kd": 0.5, "at": 1.5})  # no signal, no change
    rule = AdaptiveDistillationWeights(balance=["kd"], up=3.0, max_factor=5.0)
    assert [rule.update({}, {"kd": 0.0})["kd"] for _ in range(3)] == pytest.approx([1.0, 1.0, 1.0])  # min_share 0
    rule = AdaptiveDistillationWeights(balance=["kd"], min_share=0.2, up=3.0, max_factor=5.0)
    assert [rule.update({}, {"kd": 0.0})["kd"] for _ in range(3)] == pytest.approx([3.0, 5.0, 5.0])


def test_rules_compose_on_one_callback_and_tensors_are_read():
    rule = AdaptiveDistillationWeights(raise_on_lag=["kd"], decay_on_progress=["kd"], up=2.0, down=0.5)
    rule.update({"val/saliency/pearson": torch.tensor(0.5), "val/acc_top1": torch.tensor(0.5)})
    # agreement stalls (×2) while accuracy improves (×0.5): unchanged.
    assert rule.update({"val/saliency/pearson": torch.tensor(0.4), "val/acc_top1": torch.tensor(0.6)}) == {"kd": 1.0}


def test_adaptive_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name at least one callback"):
        AdaptiveDistillationWeights()
    with pytest.raises(ValueError, match="up must be > 1"):
        AdaptiveDistillationWeights(raise_on_lag=["at"], up=0.9)
    with pytest.raises(ValueError, match=r"down must be in \(0, 1\)"):
        AdaptiveDistillationWeights(raise_on_lag=["at"], down=1.0)
    with pytest.raises(ValueError, match="min_factor <= 1 <= max_factor"):
        AdaptiveDistillationWeights(raise_on_lag=["at"], max_factor=0.5)
    with pytest.raises(ValueError, match="task_mode must be 'max' or 'min'"):
        AdaptiveDistillationWeights(decay_on_progress=["kd"], task_mode="up")


def test_state_dict_round_trip_and_old_checkpoints():
    rule = AdaptiveDistillationWeights(raise_on_lag=["at"], decay_on_progress=["kd"], balance=["kd"])
    for a, m in ((0.5, 0.5), (0.4, 0.6)):
        rule.update({"val/saliency/pearson": a, "val/acc_top1": m}, {"kd": 0.3})
    other = AdaptiveDistillationWeights(raise_on_lag=["at"], decay_on_progress=["kd"], balance=["kd"])
    other.load_state_dict(rule.state_dict())
    assert other.state_dict() == rule.state_dict()
    # A checkpoint from a configuration with fewer names and no counters: defaults fill the gaps.
    other.load_state_dict({"factors": {"kd": 0.5}})
    assert other.factors == {"at": 1.0, "kd": 0.5} and other.stalls == rule.stalls


# -- in training, with resume -----------------------------------------------------------------------


class FakeAgreement(pl.Callback):
    """Logs a fixed sequence as the agreement metric, one value per validation, from rank zero only."""

    def __init__(self, values) -> None:
        self.values = list(values)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            value = self.values[trainer.current_epoch]
            pl_module.log("val/fake_agreement", value, rank_zero_only=True, batch_size=1)


def adaptive_run(tmp_path, trainer_kwargs, loader, epochs, ckpt_path=None):
    kd, at = LogitDistillation(), AttentionTransfer(weight=10.0)
    rule = AdaptiveDistillationWeights(
        raise_on_lag=["attention_transfer"],
        agreement_metric="val/fake_agreement",
        decay_on_progress=["kd"],
        task_metric="val/acc_top1",
        balance=["kd"],
        max_share=0.001,
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    log = WeightLog(kd, at)
    kwargs = {**trainer_kwargs, "max_epochs": epochs, "enable_checkpointing": True}
    callbacks = [kd, at, rule, FakeAgreement([0.5, 0.4, 0.3, 0.2]), checkpoint, log]
    trainer = pl.Trainer(**kwargs, callbacks=callbacks)
    trainer.fit(make_task(), loader, loader, ckpt_path=ckpt_path)
    return rule, kd, at, log


def test_adaptive_weights_in_training_and_resume_restores_state(tmp_path, tiny_loader, trainer_kwargs):
    full, kd, at, log = adaptive_run(tmp_path / "full", trainer_kwargs, tiny_loader, 3)
    # Two validations after the first showed lower agreement: attention transfer raised twice; the share of KD in
    # the loss is far above 0.1%: decayed at every validation (and more when accuracy improved).
    assert full.factors["attention_transfer"] == pytest.approx(1.25**2)
    assert full.factors["kd"] < 0.8**2
    assert at.weight == pytest.approx(10.0 * 1.25**2) and kd.weight == pytest.approx(full.factors["kd"])
    # The last epoch trained with the factor of the validation before it (the last validation raised it again).
    assert log.logged[-1]["train/weight/attention_transfer"] == pytest.approx(10.0 * 1.25)

    first, *_ = adaptive_run(tmp_path / "resumed", trainer_kwargs, tiny_loader, 2)
    assert first.factors["attention_transfer"] == pytest.approx(1.25)
    last = tmp_path / "resumed" / "ckpt" / "last.ckpt"
    resumed, kd2, at2, log2 = adaptive_run(tmp_path / "resumed", trainer_kwargs, tiny_loader, 3, ckpt_path=last)
    assert resumed.factors == pytest.approx(full.factors)
    assert resumed.best_agreement == full.best_agreement and resumed.stalls == full.stalls
    assert resumed.best_task == pytest.approx(full.best_task) and resumed.updates == full.updates == 3
    assert (kd2.weight, at2.weight) == pytest.approx((kd.weight, at.weight))
    # The resumed epoch trained with the restored factors from its first step.
    assert log2.weights[0][1] == pytest.approx(10.0 * 1.25)


class FakeMetric(pl.Callback):
    """Logs ``values[epoch]`` as ``key`` after each validation (any key: a second agreement or task signal)."""

    def __init__(self, key, values) -> None:
        self.key, self.values = key, list(values)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            pl_module.log(self.key, self.values[trainer.current_epoch], rank_zero_only=True, batch_size=1)


def two_of_each_run(tmp_path, trainer_kwargs, loader, epochs, ckpt_path=None):
    """Two distillation callbacks and two adaptive rules, each pair of one class with different configurations."""
    kd_a = LogitDistillation(weight=1.0, temperature=2.0, name="kd_a")
    kd_b = LogitDistillation(weight=3.0, temperature=4.0, name="kd_b")
    # rule_a raises kd_a as its agreement falls; rule_b decays both as its task metric rises: kd_a carries two factors
    rule_a = AdaptiveDistillationWeights(raise_on_lag=["kd_a"], agreement_metric="val/fake_agreement", up=2.0)
    rule_b = AdaptiveDistillationWeights(decay_on_progress=["kd_a", "kd_b"], task_metric="val/fake_task", down=0.5)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    signals = [FakeMetric("val/fake_agreement", [0.5, 0.4, 0.3]), FakeMetric("val/fake_task", [0.1, 0.2, 0.3])]
    kwargs = {**trainer_kwargs, "max_epochs": epochs, "enable_checkpointing": True}
    trainer = pl.Trainer(**kwargs, callbacks=[kd_a, kd_b, rule_a, rule_b, *signals, checkpoint])
    trainer.fit(make_task(), loader, loader, ckpt_path=ckpt_path)
    return kd_a, kd_b, rule_a, rule_b


def test_two_instances_of_each_stateful_callback_get_their_own_state_back(tmp_path, tiny_loader, trainer_kwargs):
    full = two_of_each_run(tmp_path / "full", trainer_kwargs, tiny_loader, 3)
    kd_a, kd_b, rule_a, rule_b = full
    assert len({c.state_key for c in full}) == 4
    assert rule_a.factors == {"kd_a": 2.0**2} and rule_b.factors == {"kd_a": 0.5**2, "kd_b": 0.5**2}
    assert kd_a.weight_factors == {rule_a.state_key: 4.0, rule_b.state_key: 0.25} and kd_a.weight == pytest.approx(1.0)
    assert kd_b.weight == pytest.approx(3.0 * 0.25)

    first = two_of_each_run(tmp_path / "resumed", trainer_kwargs, tiny_loader, 2)
    last = tmp_path / "resumed" / "ckpt" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)["callbacks"]
    assert all(saved[c.state_key] == c.state_dict() for c in first)  # four entries, none overwritten by its twin
    assert saved[first[2].state_key] != saved[first[3].state_key]
    resumed = two_of_each_run(tmp_path / "resumed", trainer_kwargs, tiny_loader, 3, ckpt_path=last)
    for before, after in zip(full, resumed, strict=True):
        assert after.state_dict() == before.state_dict(), type(after).__name__


def test_adaptive_weights_resumed_mid_stall_keep_counting(tmp_path, tiny_loader, trainer_kwargs):
    def run(root, epochs, ckpt_path=None):
        at = AttentionTransfer(weight=10.0)
        rule = AdaptiveDistillationWeights(
            raise_on_lag=["attention_transfer"], agreement_metric="val/fake_agreement", patience=3, up=2.0
        )
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)
        kwargs = {**trainer_kwargs, "max_epochs": epochs, "enable_checkpointing": True}
        signal = FakeMetric("val/fake_agreement", [0.5, 0.4, 0.3, 0.2])
        trainer = pl.Trainer(**kwargs, callbacks=[at, rule, signal, checkpoint])
        trainer.fit(make_task(), tiny_loader, tiny_loader, ckpt_path=ckpt_path)
        return rule, at

    full, full_at = run(tmp_path / "full", 4)
    # best 0.5, then three stalls: raised once, at the fourth validation, and the count restarts
    assert full.factors == {"attention_transfer": 2.0} and full.stalls == 0 and full_at.weight == pytest.approx(20.0)
    first, _ = run(tmp_path / "resumed", 3)
    assert first.stalls == 2 and first.factors == {"attention_transfer": 1.0}  # checkpointed mid-stall
    resumed, resumed_at = run(tmp_path / "resumed", 4, ckpt_path=tmp_path / "resumed" / "ckpt" / "last.ckpt")
    # a third stall after the restored two: raised, as in the uninterrupted run (a reset count would not raise)
    assert resumed.state_dict() == full.state_dict() and resumed_at.weight == pytest.approx(20.0)


def test_adaptive_state_saved_under_the_class_name_still_loads(tmp_path, tiny_loader, trainer_kwargs):
    # checkpoints written before AdaptiveDistillationWeights had a configuration-based state key
    first, *_ = adaptive_run(tmp_path, trainer_kwargs, tiny_loader, 2)
    last = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    checkpoint["callbacks"]["AdaptiveDistillationWeights"] = checkpoint["callbacks"].pop(first.state_key)
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    resumed, *_ = adaptive_run(tmp_path / "again", trainer_kwargs, tiny_loader, 2, ckpt_path=old)
    assert resumed.state_dict() == first.state_dict()  # nothing left to train: the restored state, unchanged


def test_weight_schedules_with_other_specs_have_other_state_keys():
    a, b = WeightSchedule({"kd": {"warmup": 2}}), WeightSchedule({"kd": {"warmup": 3}})
    assert a.state_key != b.state_key and a.state_key == WeightSchedule({"kd": {"warmup": 2}}).state_key


# -- loss balance without a host sync per step ------------------------------------------------------------------------


def _old_shares(steps, names):
    """The shares as the rule computed them before: Python floats, every step (one host sync per value)."""
    sums, count = dict.fromkeys(names, 0.0), 0
    for total, terms in steps:
        total = float(total)
        if total <= 0:
            continue
        for name in names:
            sums[name] += abs(float(terms[name])) / total
        count += 1
    return {name: value / count for name, value in sums.items()}


def test_balance_sums_shares_on_the_device_without_a_host_sync_per_step(monkeypatch):
    rule = AdaptiveDistillationWeights(balance=["kd", "at"])
    kd, at = LogitDistillation(), AttentionTransfer(weight=10.0)
    kd.name, at.name = "kd", "at"
    rule._targets = {"kd": kd, "at": at}
    generator = torch.Generator().manual_seed(0)
    steps = []
    for step in range(40):
        total = torch.rand((), generator=generator) * 3 - (0.5 if step % 7 == 0 else 0.0)  # some totals <= 0
        steps.append((total, {"kd": torch.randn((), generator=generator), "at": torch.randn((), generator=generator)}))
    module = types.SimpleNamespace(log=lambda *args, **kwargs: None)

    def no_sync(*args, **kwargs):
        raise AssertionError("a tensor was read on the host during a training step")

    with monkeypatch.context() as patch:
        for method in ("item", "__float__", "__bool__", "tolist", "__int__"):
            patch.setattr(torch.Tensor, method, no_sync)
        for step, (total, terms) in enumerate(steps):
            metrics = {"train/loss_step": total, **{f"train/distill/{n}_step": v for n, v in terms.items()}}
            trainer = types.SimpleNamespace(callbacks=[rule], callback_metrics=metrics)
            rule.on_train_batch_end(trainer, module, None, None, step)
    state = rule.state_dict()  # folds the device sums: one sync, at the epoch's end
    expected = _old_shares(steps, ["kd", "at"])
    shares = {name: total / state["share_steps"] for name, total in state["share_sums"].items()}
    assert shares == expected  # bit for bit: the same float64 operations in the same order
    assert state["share_steps"] == sum(1 for total, _ in steps if float(total) > 0)
