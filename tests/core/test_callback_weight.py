"""DistillationCallback's weight: configured base × the factors that weight controllers set, and its checkpoint."""

from __future__ import annotations

import pytest

from visiondistill.core.callback import DistillationCallback


def test_factors_from_several_sources_multiply_and_a_source_replaces_its_own():
    callback = DistillationCallback(weight=2.0)
    assert callback.scale_weight("schedule", 0.5) == pytest.approx(1.0)
    assert callback.scale_weight("adaptive", 3.0) == pytest.approx(3.0)
    assert callback.scale_weight("schedule", 1.0) == pytest.approx(6.0)  # replaces 0.5, keeps 3.0
    assert callback.weight == pytest.approx(6.0) and callback.base_weight == 2.0
    assert callback.weight_factors == {"schedule": 1.0, "adaptive": 3.0}
    callback.weight_factors["schedule"] = 9.0  # a copy: the callback's factors are changed by scale_weight only
    assert callback.weight_factors["schedule"] == 1.0
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"factor from 'schedule' must be finite and >= 0"):
            callback.scale_weight("schedule", bad)


def test_state_dict_restores_base_factors_and_weight():
    callback = DistillationCallback(weight=2.0)
    callback.scale_weight("schedule", 0.25)
    restored = DistillationCallback(weight=7.0)  # another configured weight: the checkpoint's wins on resume
    restored.load_state_dict(callback.state_dict())
    assert (restored.weight, restored.base_weight, restored.weight_factors) == (0.5, 2.0, {"schedule": 0.25})
    assert restored.scale_weight("adaptive", 2.0) == pytest.approx(1.0)  # scaled on the restored base


def test_a_checkpoint_with_only_the_weight_keeps_the_configured_base():
    # written before the callback kept its base and factors: "weight" was already scaled by the controllers
    callback = DistillationCallback(weight=2.0)
    callback.load_state_dict({"weight": 0.5})
    assert callback.weight == 0.5 and callback.base_weight == 2.0 and callback.weight_factors == {}
    assert callback.scale_weight("schedule", 0.25) == pytest.approx(0.5)  # base × factor, not scaled twice


def test_the_state_key_does_not_change_as_the_weight_changes():
    callback = DistillationCallback(weight=2.0, name="kd")
    key = callback.state_key
    callback.scale_weight("schedule", 0.5)
    assert callback.state_key == key
