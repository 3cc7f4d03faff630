"""The stage-5 RoI head of a C4 Faster R-CNN, with CBAM in every block."""
from typing import Union

from mmdet.models.backbones.resnet import Bottleneck
from mmdet.models.layers import ResLayer as ResBlocks
from mmdet.models.roi_heads.shared_heads import ResLayer
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from ...backbones.cbam_resnet import CBAMResNet, start_blocks_as_parent
from ...backbones.resnet_checkpoints import (check_pretrained_resnet, check_start_from_parent,
                                             resolve_start_from_parent)
from ...utils import DEFAULT_CBAM_CFG, cbam_plugin, check_registered, mmdet_scope_if_unset


@MODELS.register_module()
class CBAMResLayer(ResLayer):
    """mmdet's C4 shared head (``ResLayer``) with CBAM after the last norm of every block.

    In a C4 detector the last backbone stage runs per RoI as the shared head, so a CBAM detector
    needs CBAM there too (R50: 13 CBAMs in the backbone + 3 here). Block names match the backbone
    (``layer4.0.cbam...``), so a CBAM ImageNet checkpoint loads into both.

    Args:
        depth (int): ResNet depth.
        cbam_cfg (dict): Attention config, as in ``CBAMResNet``. Defaults to ``dict(type='CBAM')``.
        start_from_parent (bool or str): As in ``CBAMResNet``. Defaults to 'auto'.
        **kwargs: mmdet ``ResLayer`` arguments (stage, stride, dilation, style, norm_cfg,
            norm_eval, with_cp, dcn, init_cfg).
    """

    def __init__(self,
                 depth: int,
                 cbam_cfg: ConfigType = DEFAULT_CBAM_CFG,
                 start_from_parent: Union[bool, str] = 'auto',
                 stage: int = 3,
                 stride: int = 2,
                 dilation: int = 1,
                 style: str = 'pytorch',
                 with_cp: bool = False,
                 dcn: ConfigType = None,
                 **kwargs) -> None:
        if depth not in CBAMResNet.arch_settings:
            raise ValueError(f'CBAMResLayer: invalid depth={depth!r}; valid depths: '
                             f'{sorted(CBAMResNet.arch_settings)}')
        check_registered('CBAMResLayer', 'cbam_cfg', cbam_cfg)
        check_start_from_parent('CBAMResLayer', start_from_parent)
        super().__init__(depth, stage=stage, stride=stride, dilation=dilation, style=style,
                         with_cp=with_cp, dcn=dcn, **kwargs)
        # Rebuild the stage mmdet just built, now with CBAM (its ResLayer takes no plugins).
        block, stage_blocks = CBAMResNet.arch_settings[depth]
        planes = 64 * 2**stage
        with mmdet_scope_if_unset():
            blocks = ResBlocks(block, planes // 2 * block.expansion, planes, stage_blocks[stage],
                               stride=stride, dilation=dilation, style=style, with_cp=with_cp,
                               norm_cfg=self.norm_cfg, dcn=dcn,
                               plugins=[cbam_plugin(block, cbam_cfg, norm_cfg=self.norm_cfg)])
        self.add_module(f'layer{stage + 1}', blocks)
        self.depth = depth
        self.start_from_parent = start_from_parent

    def init_weights(self) -> None:
        first_call = not self.is_init
        if first_call:
            block, stage_blocks = CBAMResNet.arch_settings[self.depth]
            weights = check_pretrained_resnet(
                self, getattr(self, f'layer{self.stage + 1}'),
                {self.stage: stage_blocks[self.stage]}, self.depth,
                issubclass(block, Bottleneck), self.start_from_parent)
            from_parent = resolve_start_from_parent('CBAMResLayer', self.start_from_parent,
                                                    weights)
        super().init_weights()
        if first_call and from_parent:
            start_blocks_as_parent(getattr(self, f'layer{self.stage + 1}'))
