"""Callback arguments from the command line: ``--trainer.callbacks.<ClassName>[#n].<argument>=<value>``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from visiondistill.cli import VisionDistillCLI
from visiondistill.cli.overrides import CallbackOverrideError, expand_callback_overrides
from visiondistill.core.errors import ConfigError
from visiondistill.distill import AttentionTransfer, LogitDistillation

from ..support.cli import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
KD_CONFIG = ROOT / "configs" / "classification" / "shapes_kd.yaml"


def _config(tmp_path: Path, callbacks: list) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


def _callbacks(argv: list[str]) -> list[dict]:
    flag = argv[-1]
    assert flag.startswith("--trainer.callbacks=")
    return json.loads(flag.split("=", 1)[1])


LOGIT = {"class_path": "visiondistill.distill.LogitDistillation", "init_args": {"temperature": 4.0}}
HINT = "visiondistill.distill.FeatureHint"


def test_an_override_reaches_the_callback_instance(tmp_path: Path):
    # shapes_kd.yaml without its teacher checkpoint (any teacher weights do to build the run)
    config = yaml.safe_load(KD_CONFIG.read_text())
    del config["model"]["init_args"]["teacher"]["checkpoint"]
    edited = tmp_path / "kd.yaml"
    edited.write_text(yaml.safe_dump(config))
    argv = [
        "--config",
        str(edited),
        *tiny_overrides(tmp_path, "kd"),
        "--trainer.callbacks.LogitDistillation.temperature=2",
        "--trainer.callbacks.AttentionTransfer.student_layers",
        "[-2, -1]",
    ]
    cli = VisionDistillCLI(args=expand_callback_overrides(argv), run=False)
    logit = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LogitDistillation))
    attention = next(cb for cb in cli.trainer.callbacks if isinstance(cb, AttentionTransfer))
    assert logit.temperature == 2.0 and logit.weight == 1.0, "only the named argument changes"
    assert list(attention.student_layers) == [-2, -1] and list(attention.teacher_layers) == [-3, -2]


def test_the_second_of_two_entries_is_named_with_a_number(tmp_path: Path):
    second = {"class_path": LOGIT["class_path"], "init_args": {"temperature": 1.0, "name": "kd2"}}
    config = _config(tmp_path, [LOGIT, second])
    argv = expand_callback_overrides(
        ["fit", "--config", str(config), "--trainer.callbacks.LogitDistillation#2.weight=0.5"]
    )
    entries = _callbacks(argv)
    assert entries[0]["init_args"] == {"temperature": 4.0}
    assert entries[1]["init_args"] == {"temperature": 1.0, "name": "kd2", "weight": 0.5}
    assert argv[:3] == ["fit", "--config", str(config)], "the other arguments stay, in order"


def test_a_class_listed_twice_must_be_numbered(tmp_path: Path):
    config = _config(tmp_path, [LOGIT, LOGIT])
    with pytest.raises(CallbackOverrideError, match=r"2 LogitDistillation callbacks.*LogitDistillation#1\.weight"):
        expand_callback_overrides(["fit", "--config", str(config), "--trainer.callbacks.LogitDistillation.weight=1"])


def test_an_unknown_class_names_the_callbacks_of_the_config(tmp_path: Path):
    config = _config(tmp_path, [LOGIT, HINT])
    with pytest.raises(ConfigError, match=r"no callback 'LogitDistilation' \(did you mean 'LogitDistillation'\?\); "):
        expand_callback_overrides(["--config", str(config), "--trainer.callbacks.LogitDistilation.weight=1"])
    with pytest.raises(ConfigError, match="its callbacks: LogitDistillation, FeatureHint"):
        expand_callback_overrides(["--config", str(config), "--trainer.callbacks.Foo.weight=1"])


def test_an_unknown_argument_names_the_arguments_of_the_class(tmp_path: Path):
    config = _config(tmp_path, [LOGIT])
    with pytest.raises(ConfigError, match=r"no argument 'temprature' \(did you mean 'temperature'\?\).*weight, name"):
        expand_callback_overrides(["--config", str(config), "--trainer.callbacks.LogitDistillation.temprature=2"])


def test_values_are_yaml_and_a_bare_class_path_entry_works(tmp_path: Path):
    config = _config(tmp_path, [HINT])
    argv = ["--config", str(config), "--trainer.callbacks.FeatureHint.student_layer", "layer3"]
    argv += ["--trainer.callbacks.FeatureHint.weight=null"]
    assert _callbacks(expand_callback_overrides(argv)) == [
        {"class_path": HINT, "init_args": {"student_layer": "layer3", "weight": None}}
    ]


def test_without_overrides_nothing_changes_and_jsonargparse_flags_pass(tmp_path: Path):
    argv = ["fit", "--config", "missing.yaml", "--trainer.callbacks.help", "ModelCheckpoint"]
    assert expand_callback_overrides(argv) == argv


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trainer.callbacks.LogitDistillation=2"], "name the argument too"),
        (["--trainer.callbacks.LogitDistillation.weight"], "no value given"),
        (["--trainer.callbacks.LogitDistillation.weight=1"], "no --config file sets trainer.callbacks"),
        (["--trainer.callbacks.LogitDistillation#3.weight=1", "--config", "{config}"], "#3 does not exist"),
    ],
    ids=["no-argument", "no-value", "no-config", "no-such-entry"],
)
def test_malformed_overrides_say_what_is_wrong(tmp_path: Path, argv: list[str], message: str):
    config = _config(tmp_path, [LOGIT])
    with pytest.raises(CallbackOverrideError, match=message):
        expand_callback_overrides([arg.format(config=config) for arg in argv])
