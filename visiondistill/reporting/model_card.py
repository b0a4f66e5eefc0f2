"""``MODEL_CARD_<run>.md`` for a distilled student, filled from its run folder and the report's measurements.

The structure is that of Mitchell et al. (2019), "Model Cards for Model Reporting": model details, intended use,
factors, metrics, evaluation data, training data, ethical considerations, caveats and recommendations.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visiondistill.reporting.document import Heading, Paragraph, Table, to_markdown
from visiondistill.reporting.measure import Measurements, metric_levels
from visiondistill.reporting.runs import Run

#: A class whose metric lies this many points below the mean over classes is flagged in the bias check.
BIAS_GAP_POINTS = 10.0

#: Data modules whose images stand in for medical images: their cards carry the clinical-use warning.
_MEDICAL_DATA = ("SyntheticLesions",)


def _versions() -> str:
    import pytorch_lightning
    import timm
    import torch

    return f"torch {torch.__version__}, pytorch-lightning {pytorch_lightning.__version__}, timm {timm.__version__}"


def _fmt(value: float) -> str:
    return f"{100 * value:.1f}%" if 0.0 <= value <= 1.0 else f"{value:.4g}"


def bias_check(test: dict[str, float], heads: Sequence[str] = ()) -> list[dict[str, str]]:
    """Per-class metric families of a run with the classes lying ``BIAS_GAP_POINTS`` or more below their mean.

    Args:
        test: The run's ``test/*`` metrics (per-class ones have two levels: ``test/iou/<class>``).
        heads: A multi-task student's heads: its metrics carry the head (``test/seg/iou/<class>``).

    Returns:
        One row per family: its mean over classes, worst class and the flagged classes.
    """
    families: dict[str, dict[str, float]] = {}
    for key, value in test.items():
        if metric_levels(key, heads) >= 2 and "loss" not in key:
            family, name = key.rsplit("/", 1)
            families.setdefault(family, {})[name] = value
    rows = []
    for family, values in sorted(families.items()):
        mean = statistics.fmean(values.values())
        worst = min(values, key=values.get)
        flagged = [n for n, v in values.items() if 100 * (mean - v) >= BIAS_GAP_POINTS]
        rows.append(
            {
                "metric": f"`{family}`",
                "mean over classes": _fmt(mean),
                "worst class": f"{worst} ({_fmt(values[worst])})",
                f"classes ≥ {BIAS_GAP_POINTS:g} points below the mean": ", ".join(flagged) or "none",
            }
        )
    return rows


def write_model_card(
    run: Run,
    measured: dict[str, Measurements],
    teacher: Run | None,
    out: Path,
    data_dir: str | None = None,
    heads: Sequence[str] = (),
) -> Path:
    """Writes ``<out>/MODEL_CARD_<run name>.md`` for a (distilled) student run.

    The card goes next to the report, never into the run folder, which is written once by ``visiondistill fit``.

    Args:
        run: The student's run.
        measured: The report's measurements by run name (the student's; the teacher's when present).
        teacher: The teacher's run, when it is part of the report.
        out: The folder the card is written to (the report's).
        data_dir: Data folder replacing the one in the config (as given to the report).
        heads: A multi-task student's output heads (its metrics are named per head, ``test/<head>/<metric>``).

    Returns:
        The card's path.
    """
    m = measured[run.name]
    data = run.config.get("data") or {}
    data_class = str(data.get("class_path", "?")).rsplit(".", 1)[-1]
    data_args = dict(data.get("init_args") or {})
    if data_dir is not None:
        data_args["data_dir"] = data_dir
    model_args = (run.config.get("model") or {}).get("init_args") or {}
    medical = data_class in _MEDICAL_DATA
    trained = datetime.fromtimestamp(run.checkpoint.stat().st_mtime, tz=UTC).strftime("%Y-%m-%d")
    monitor = run.monitor[0]
    headline = {k: v for k, v in m.test.items() if metric_levels(k, heads) == 1 and "loss" not in k}
    teacher_spec = run.hparams.get("teacher") or run.hparams.get("teachers") or {}  # one spec, or several
    distillation = [
        f"`{c['class_path'].rsplit('.', 1)[-1]}` {c.get('init_args') or {}}"
        for c in run.callbacks()
        if str(c.get("class_path", "")).startswith("visiondistill.distill.")
    ]

    blocks = [
        Heading(f"Model card — {run.name}", 1),
        Paragraph(
            "Structure after Mitchell et al. (2019), *Model Cards for Model Reporting*. Filled by `visiondistill "
            "report` from the run folder; every figure below was measured on the run's own test split."
        ),
        Heading("Model details"),
        Table(
            [
                {"": "network", "value": f"{run.model_name} (`{run.task_class_path}`)"},
                {"": "student spec", "value": f"`{run.hparams.get('student')}`"},
                {
                    "": "size",
                    "value": f"{m.params / 1e6:.3f} M parameters, {m.flops / 1e6:.1f} MFLOPs per image, "
                    f"checkpoint {m.checkpoint_mb:.2f} MB",
                },
                {
                    "": "CPU latency",
                    "value": f"{m.latency_ms:.2f} ms per image (batch 1, median; "
                    f"{platform.processor() or platform.machine()})",
                },
                {"": "teacher", "value": f"`{teacher_spec}`" + (f", run `{teacher.path}`" if teacher else "")},
                {"": "distillation", "value": "; ".join(distillation) or "none"},
                {
                    "": "training",
                    "value": f"{model_args.get('optimizer', 'adamw')}, lr {model_args.get('lr', '?')}, "
                    f"{run.epochs or '?'} epochs, seed {run.config.get('seed_everything', '?')}; best checkpoint by "
                    f"`{monitor}`",
                },
                {"": "date, software", "value": f"{trained}; {_versions()}"},
                {"": "weights", "value": "trained from random initialisation (`pretrained: false`); no external data"},
                {"": "checkpoint", "value": f"`{run.checkpoint}`"},
            ]
        ),
        Heading("Intended use"),
        Paragraph(
            "Primary use: a small, fast network distilled from a larger one, for edge deployment and for studying "
            "what distillation transfers (accuracy and where the network looks). Primary users: ML engineers "
            "evaluating compression. "
            + (
                "**Out of scope: any clinical or diagnostic use.** The lesion images are synthetic stand-ins; the "
                "model has not been validated on patient data and must not inform care."
                if medical
                else "Out of scope: decisions about people, safety-critical uses, and data unlike the training data "
                "below without re-evaluation."
            )
        ),
        Heading("Factors"),
        Paragraph(
            f"Relevant factors are the classes (per-class metrics below), image size "
            f"({data_args.get('image_size', '?')} px), input channels and the generator's settings of the data "
            f"(`{data_class}`: {_data_summary(data_args)}). Performance on other image sizes, sensors or "
            "distributions is not measured."
        ),
        Heading("Metrics"),
        Table(
            [
                {"metric": f"`{k}`", "student": _fmt(v), "teacher": _teacher_value(measured, teacher, k)}
                for k, v in sorted(headline.items())
            ]
        ),
        Paragraph(
            f"Bias check: per-class metrics, flagging classes {BIAS_GAP_POINTS:g} or more points below the mean "
            "over classes."
        ),
        Table(bias_check(m.test, heads) or [{"metric": "no per-class metrics logged"}]),
        Paragraph(
            "Explanation metrics — agreement with the teacher on test images (Grad-CAM for the same target; "
            "attention-map cosine and debiased CKA of features):"
        ),
        Table(
            [{"metric": k, "value": f"{v:.3f}"} for k, v in {**m.saliency, **m.attention}.items()]
            or [{"metric": "not measured (no teacher run in the report)"}]
        ),
        Heading("Evaluation data"),
        Paragraph(
            f"The test split of `{data_class}` ({_data_summary(data_args)}), never used for training or "
            "checkpoint selection."
        ),
        Heading("Training data"),
        Paragraph(f"The training split of the same data; checkpoint chosen on its validation split by `{monitor}`."),
        Heading("Ethical considerations"),
        Paragraph(
            "The training data is synthetic (generated shapes or lesions), with no personal data. Saliency maps are "
            "approximations of what drives a prediction, not proof of it; agreement with the teacher means the "
            "student inherits the teacher's blind spots as well as its strengths."
        ),
        Heading("Caveats and recommendations"),
        Paragraph(
            "Figures come from one training run (one seed); distilled and scratch students of the same budget "
            "differ by several points from run to run, so compare over seeds (`benchmarks/seed_sweep.py`) before "
            "deciding. Latency was measured on the CPU that wrote this card; measure on the target device (export "
            "with `visiondistill export`). Re-evaluate on real data before any deployment."
        ),
    ]
    path = Path(out) / f"MODEL_CARD_{run.name}.md"
    path.write_text(to_markdown(blocks))
    return path


def _teacher_value(measured: dict[str, Measurements], teacher: Run | None, key: str) -> str:
    if teacher is None or key not in measured[teacher.name].test:
        return "–"
    return _fmt(measured[teacher.name].test[key])


def _data_summary(args: dict[str, Any]) -> str:
    keys = ("data_dir", "image_size", "num_train", "num_val", "num_test", "difficulty", "seed")
    shown = [f"{k}={args[k]}" for k in keys if k in args]
    return ", ".join(shown) or "settings in config.yaml"
