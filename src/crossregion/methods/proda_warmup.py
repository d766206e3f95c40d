"""ProDA's warm-up: the maintainers' ``--stage warm_up`` command (docs/proda.md, "Warm-up").

microsoft/ProDA issues #27 and #42 give it as ``train.py --stage warm_up --freeze_bn --gan LS
--lr 2.5e-4 --adv 0.01`` from ImageNet weights (``--no_resume``): ``CustomModel.step_adv``, i.e.
AdaptSegNet's single-level output-space step with a least-squares GAN (``LeastSquaresAdaptation``,
shared with IAST's warm-up) on ProDA's model and discriminator. Per iteration: source CE on the
logits upsampled to the image (``align_corners=True``); the target softmax through the frozen
discriminator, ``adv_main_weight`` · MSE(D(p_t), 0); one segmenter step (head x10); then D learns
MSE(D(p_s), 0) + MSE(D(p_t), 1) on detached maps (no ½, unlike IAST: ``disc_domain_weight`` 1),
Adam 1e-4, betas (0.9, 0.99). ``--freeze_bn`` puts every BatchNorm in eval mode with frozen
affine parameters: ``model.freeze_bn: true`` in the presets.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from crossregion.config.schema import ExperimentConfig
from crossregion.methods.adaptsegnet import AdaptSegNetConfig, LeastSquaresAdaptation
from crossregion.methods.base import register_method
from crossregion.models import ProdaDiscriminator

# --adv: the weight of the segmenter's adversarial term.
PRODA_WARMUP_ADVERSARIAL_WEIGHT = 0.01


@dataclass(frozen=True)
class ProdaWarmupConfig(AdaptSegNetConfig):
    """ProDA's warm-up (official ``step_adv`` with ``--gan LS --adv 0.01``); the aux fields of
    ``AdaptSegNetConfig`` are unused (one discriminator)."""

    name: str = "proda_warmup"
    adv_main_weight: float = PRODA_WARMUP_ADVERSARIAL_WEIGHT
    # loss_D = MSE(D(p_s), 0) + MSE(D(p_t), 1), unhalved.
    disc_domain_weight: float = 1.0
    # ProDA's FCDiscriminator(planes=64).
    disc_width: int = 64


@register_method
class ProdaWarmup(LeastSquaresAdaptation):
    """The single-level least-squares step with ProDA's discriminator, on ProDA's model."""

    config_class = ProdaWarmupConfig

    def check_config(self, cfg: ExperimentConfig) -> None:
        super().check_config(cfg)
        if cfg.model.head != "proda":
            raise ValueError("method proda_warmup trains ProDA's model for its stage 1; set model.head: proda")

    def build_discriminator(self) -> nn.Module:
        return ProdaDiscriminator(self.num_classes, ndf=self.cfg.disc_width)
