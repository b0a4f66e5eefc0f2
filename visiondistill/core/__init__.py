"""What the distillation and the explanation callbacks both stand on; it imports nothing else of visiondistill.

- `protocol`: the small protocol a LightningModule follows (``student``, ``teacher``), teacher freezing, batch
  and output parsing;
- `callback`: `DistillationCallback`, the base of every loss term, and `distillation_loss`, which a task's
  ``training_step`` calls;
- `recorder`: forward-hook feature recorders addressed by module path or stage index;
- `maps`: attention maps, the differentiable Grad-CAM map and box masks;
- `saliency` and `adapters`: what to explain in each task's output (saliency adapters and their registry);
- `errors`: `VisionDistillError`, the base of every error raised for a user's mistake, and `ConfigError`;
- `validation`: argument checks of the pure tensor functions.

See ``docs/architecture.md`` for the layers and the import rule.
"""

from visiondistill.core.callback import DistillationCallback, distillation_callbacks, distillation_loss
from visiondistill.core.errors import ConfigError, ConfigTypeError, VisionDistillError
from visiondistill.core.maps import attention_map, boxes_to_masks, gradcam_map
from visiondistill.core.protocol import (
    ProtocolError,
    batch_inputs,
    batch_targets,
    example_inputs,
    freeze_teacher,
    get_student,
    get_teacher,
    module_device,
    output_logits,
)
from visiondistill.core.recorder import (
    FeatureRecorder,
    FeatureStage,
    LayerNotFoundError,
    LayerSpec,
    feature_stages,
    probe_features,
    resolve_layer,
)
from visiondistill.core.saliency import (
    SALIENCY_ADAPTERS,
    ClassificationSaliencyAdapter,
    LogitsModel,
    SaliencyAdapter,
    TokenReshape,
    register_saliency_adapter,
    saliency_adapter_for,
)

__all__ = [
    "SALIENCY_ADAPTERS",
    "ClassificationSaliencyAdapter",
    "ConfigError",
    "ConfigTypeError",
    "DistillationCallback",
    "FeatureRecorder",
    "FeatureStage",
    "LayerNotFoundError",
    "LayerSpec",
    "LogitsModel",
    "ProtocolError",
    "SaliencyAdapter",
    "TokenReshape",
    "VisionDistillError",
    "attention_map",
    "batch_inputs",
    "batch_targets",
    "boxes_to_masks",
    "distillation_callbacks",
    "distillation_loss",
    "example_inputs",
    "feature_stages",
    "freeze_teacher",
    "get_student",
    "get_teacher",
    "gradcam_map",
    "module_device",
    "output_logits",
    "probe_features",
    "register_saliency_adapter",
    "resolve_layer",
    "saliency_adapter_for",
]
