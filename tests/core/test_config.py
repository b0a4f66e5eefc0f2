"""spec_from: config mappings made into spec dataclasses, renamed keys translated."""

from __future__ import annotations

import warnings

import pytest

from visiondistill.core.config import spec_from
from visiondistill.models import ClassifierSpec, KeypointModelSpec, SegmenterSpec


def test_a_mapping_becomes_the_spec_and_unknown_keys_are_named():
    spec = spec_from(ClassifierSpec, {"name": "test_resnet", "in_channels": 1}, "student", expected="a mapping")
    assert spec == ClassifierSpec(name="test_resnet", in_channels=1)
    assert spec_from(ClassifierSpec, spec, "student", expected="a mapping") is spec
    with pytest.raises(TypeError, match=r"student spec: unknown keys \['nmae'\]; valid keys are \['checkpoint'"):
        spec_from(ClassifierSpec, {"nmae": "test_resnet"}, "student", expected="a mapping")
    with pytest.raises(TypeError, match="teacher spec must be a mapping, got int"):
        spec_from(ClassifierSpec, 3, "teacher", expected="a mapping")


@pytest.mark.parametrize("cls", [ClassifierSpec, KeypointModelSpec, SegmenterSpec])
def test_the_old_in_chans_key_is_translated_with_a_warning(cls: type):
    with pytest.warns(FutureWarning, match=r"teacher spec: 'in_chans' is deprecated, write 'in_channels: 1' instead"):
        spec = spec_from(cls, {"in_chans": 1}, "teacher", expected="a mapping")
    assert spec.in_channels == 1 and not hasattr(spec, "in_chans")


def test_both_spellings_must_agree():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert spec_from(ClassifierSpec, {"in_chans": 1, "in_channels": 1}, "student", "a mapping").in_channels == 1
    with pytest.raises(TypeError, match="student spec: in_chans=1 and in_channels=3 disagree; set in_channels only"):
        spec_from(ClassifierSpec, {"in_chans": 1, "in_channels": 3}, "student", expected="a mapping")
