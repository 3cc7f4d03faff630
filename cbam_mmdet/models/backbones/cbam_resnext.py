"""ResNeXt backbones with CBAM in every residual block (paper Table 4)."""
from mmdet.models.backbones.resnext import Bottleneck, ResNeXt
from mmdet.registry import MODELS
from .cbam_resnet import CBAMBackboneMixin, FusedNormBottleneckMixin


class CBAMResNeXtBottleneck(FusedNormBottleneckMixin, Bottleneck):
    """mmdet's ResNeXt ``Bottleneck``; a CBAM plugin after conv3 runs the last norm in its fused
    path."""


@MODELS.register_module()
class CBAMResNeXt(CBAMBackboneMixin, ResNeXt):
    """ResNeXt (depth 50, 101, 152; ``groups`` and ``base_width`` as in mmdet's ResNeXt) with
    CBAM after the last norm of every block. See ``CBAMBackboneMixin`` for the CBAM arguments.

    Example:
        >>> backbone = CBAMResNeXt(depth=50, groups=32, base_width=4)
    """
    arch_settings = {
        depth: (CBAMResNeXtBottleneck, blocks)
        for depth, (_, blocks) in ResNeXt.arch_settings.items()
    }
