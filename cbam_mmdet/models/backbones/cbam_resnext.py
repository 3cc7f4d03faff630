"""ResNeXt backbones with CBAM in every residual block (paper Table 4)."""
from mmdet.models.backbones.resnext import ResNeXt
from mmdet.registry import MODELS

from .cbam_resnet import CBAMBackboneMixin


@MODELS.register_module()
class CBAMResNeXt(CBAMBackboneMixin, ResNeXt):
    """ResNeXt (depth 50, 101, 152; ``groups`` and ``base_width`` as in mmdet's ResNeXt) with
    CBAM after the last norm of every block. See ``CBAMBackboneMixin`` for the CBAM arguments.

    Example:
        >>> backbone = CBAMResNeXt(depth=50, groups=32, base_width=4)
    """
