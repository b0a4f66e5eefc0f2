"""`VisionDistillCLI`: LightningCLI with visiondistill's defaults (any task module, any datamodule)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from pytorch_lightning.cli import LightningCLI

# A frozen teacher is in eval mode on purpose; Lightning's generic warning about it would only confuse.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


class VisionDistillCLI(LightningCLI):
    """LightningCLI with visiondistill's defaults: any task module, any datamodule, configs saved per run."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=list(args) if args is not None else None,
            run=run,
            auto_configure_optimizers=False,
        )
