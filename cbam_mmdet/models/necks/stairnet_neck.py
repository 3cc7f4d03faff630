"""StairNet's top-down semantic aggregation on SSD300, with attention before the heads (paper
Sect. 4.6, Table 8)."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, DepthwiseSeparableConvModule, build_norm_layer
from mmengine.model import BaseModule
from torch import Tensor

from mmdet.models.necks import SSDNeck
from mmdet.models.necks.ssd_neck import L2Norm
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from ..utils import check_registered

# The attention options of Table 8, as ``attention`` values.
ATTENTION_EXAMPLES = ("None (plain StairNet), dict(type='CBAM', arrangement='channel', "
                      "pool_types=('avg',)) (SE), dict(type='CBAM') (CBAM)")
STAIRNET_NORM = dict(type='BN', momentum=0.01)


def upsampling_geometry(coarse: int, fine: int) -> Tuple[int, int, int]:
    """(stride, padding, output_padding) of a 3x3 transposed conv from side ``coarse`` to ``fine``.

    StairNet's: stride 2, padding 1 wherever the finer side is 2x-1 or 2x (the output padding
    picks which, e.g. 5 -> 10 but 10 -> 19), and stride 1, padding 0 for x -> x + 2 (its 1 -> 3).
    """
    if fine in (2 * coarse - 1, 2 * coarse):
        return 2, 1, fine - (2 * coarse - 1)
    if fine == coarse + 2:
        return 1, 0, 0
    raise ValueError(f'StairNetNeck: cannot upsample a side of {coarse} to {fine} with a 3x3 '
                     f'transposed conv; the finer side must be 2x-1, 2x or x+2 for a coarser '
                     f'side x, as between consecutive SSD levels')


def smallest_last_source_side(level_strides: Sequence[int], level_paddings: Sequence[int],
                              last_kernel_size: int) -> int:
    """Smallest side of the last source that ``SSDNeck``'s extra layers (3x3 convs, the last
    ``last_kernel_size``) shrink to a side of at least 1 at every level, e.g. 17 for SSD300's
    VGG16 extras (17 -> 9 -> 5 -> 3 -> 1) and 1 for MobileNet-SSD's."""
    kernels = [3] * (len(level_strides) - 1) + [last_kernel_size]
    side = 1
    for stride, padding, kernel in reversed(list(zip(level_strides, level_paddings, kernels))):
        side = max(1, (side - 1) * stride + kernel - 2 * padding)
    return side


class ZeroSafeL2Norm(L2Norm):
    """mmdet's ``L2Norm`` with a finite gradient at an all-zero pixel.

    mmdet's computes the norm as ``x.pow(2).sum(1).sqrt()``, whose backward at a pixel that is 0
    in every channel is 0 * inf = NaN, which then reaches the backbone. ``vector_norm``'s backward
    is 0 there; the output is the same.
    """

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W), computed in float32 as mmdet's."""
        x_float = x.float()
        norm = torch.linalg.vector_norm(x_float, dim=1, keepdim=True) + self.eps
        return (self.weight[None, :, None, None].float() * x_float / norm).type_as(x)


class SizeMatchedConvTranspose2d(nn.ConvTranspose2d):
    """A 3x3 transposed conv (no bias) whose stride and padding are chosen per call from the
    input's size and the requested output size (``upsampling_geometry``), per dimension.

    Args:
        channels (int): Input and output channels.
        depthwise (bool): One filter per channel (``groups=channels``).
    """

    def __init__(self, channels: int, depthwise: bool) -> None:
        super().__init__(channels, channels, 3, groups=channels if depthwise else 1, bias=False)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """(N, C, h, w) -> (N, C, *size)."""
        stride, padding, output_padding = zip(
            *(upsampling_geometry(int(c), int(f)) for c, f in zip(x.shape[-2:], size)))
        return F.conv_transpose2d(x, self.weight, None, stride, padding, output_padding,
                                  self.groups)


@MODELS.register_module()
class StairNetNeck(BaseModule):
    """SSD's extra layers followed by StairNet's top-down path and optional attention.

    mmdet's ``SSDNeck`` (built from the first group of arguments, which are its own) turns the
    backbone's sources into SSD's six maps. StairNet then aggregates them from coarse to fine:

    1. lateral: each map -> 1x1 conv (no bias) + BN to ``feat_channels``, no activation;
    2. top-down: from the coarsest level, the running sum is upsampled by a 3x3 transposed conv
       (no bias, see ``SizeMatchedConvTranspose2d``) + BN, no activation, and added to the next
       finer lateral map;
    3. post-fusion: each fused map -> 3x3 conv (no bias) + BN + ReLU;
    4. attention: ``attention`` (SE or CBAM in Table 8) on each fused map, right before its
       detection head.

    BN momentum 0.01 and Kaiming-normal (fan_out) convs, as in StairNet's code; the extra layers
    keep ``SSDNeck``'s init.

    ``use_depthwise=True`` is the light variant for MobileNet-SSD (the paper gives only its
    parameter counts, +0.17M over MobileNet-SSD): dense 1x1 laterals, depthwise 3x3 transposed
    convs, and a depthwise-separable 3x3 conv (each part + BN + ReLU) after each fusion. With
    ``feat_channels=128`` and the 1x1 heads then reading 128 channels instead of 128 to 1024,
    it adds 0.20M (laterals +0.35M, upsampling +0.01M, post-fusion +0.11M, heads -0.26M).

    Args:
        in_channels (Sequence[int]): Channels of the backbone's sources.
        out_channels (Sequence[int]): Channels of SSD's maps (the sources', then the extras').
        level_strides (Sequence[int]): Strides of the extra layers' 3x3 convs.
        level_paddings (Sequence[int]): Paddings of the extra layers' 3x3 convs.
        l2_norm_scale (float, optional): L2Norm scale of the first source (VGG16's conv4_3);
            None for no L2Norm. Defaults to 20.
        last_kernel_size (int): Kernel of the last extra conv. Defaults to 3.
        conv_cfg (dict, optional): Conv config of the extra layers. Defaults to None.
        norm_cfg (dict, optional): Norm config of the extra layers. Defaults to None.
        act_cfg (dict): Activation config of the extra layers and the post-fusion convs.
            Defaults to ``dict(type='ReLU')``.
        feat_channels (int): Channels of the top-down path and of every output. Defaults to 256.
        use_depthwise (bool): The light top-down path described above. Defaults to False.
        topdown_norm_cfg (dict): Norm config of the top-down path. Defaults to
            ``dict(type='BN', momentum=0.01)``.
        attention (dict, optional): A registered module, built once per level with
            ``in_channels=feat_channels``, applied to each output; None for none. SE is
            ``dict(type='CBAM', arrangement='channel', pool_types=('avg',))``, CBAM
            ``dict(type='CBAM')``. Defaults to None.
        init_cfg (dict or list[dict], optional): Initialisation of the top-down path.
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: Sequence[int],
                 level_strides: Sequence[int],
                 level_paddings: Sequence[int],
                 l2_norm_scale: Optional[float] = 20.,
                 last_kernel_size: int = 3,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 act_cfg: ConfigType = dict(type='ReLU'),
                 feat_channels: int = 256,
                 use_depthwise: bool = False,
                 topdown_norm_cfg: ConfigType = STAIRNET_NORM,
                 attention: OptConfigType = None,
                 init_cfg: OptMultiConfig = [
                     dict(type='Kaiming', layer=['Conv2d', 'ConvTranspose2d'], mode='fan_out'),
                     dict(type='Constant', val=1, bias=0, layer='_BatchNorm')
                 ]) -> None:
        super().__init__(init_cfg=init_cfg)
        self.ssd_neck = SSDNeck(in_channels, out_channels, level_strides, level_paddings,
                                l2_norm_scale=l2_norm_scale, last_kernel_size=last_kernel_size,
                                conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        if l2_norm_scale:
            self.ssd_neck.l2_norm = ZeroSafeL2Norm(in_channels[0], l2_norm_scale)
        self.smallest_last_source_side = smallest_last_source_side(
            level_strides, level_paddings, last_kernel_size)
        self.laterals = nn.ModuleList(
            ConvModule(channels, feat_channels, 1, norm_cfg=topdown_norm_cfg, act_cfg=None)
            for channels in out_channels)
        self.upsamples = nn.ModuleList(
            SizeMatchedConvTranspose2d(feat_channels, use_depthwise) for _ in out_channels[1:])
        self.upsample_norms = nn.ModuleList(
            build_norm_layer(topdown_norm_cfg, feat_channels)[1] for _ in out_channels[1:])
        post_fusion = DepthwiseSeparableConvModule if use_depthwise else ConvModule
        self.post_fusions = nn.ModuleList(
            post_fusion(feat_channels, feat_channels, 3, padding=1, norm_cfg=topdown_norm_cfg,
                        act_cfg=act_cfg) for _ in out_channels)
        self.attentions = nn.ModuleList(
            build_attention(attention, feat_channels) for _ in out_channels)

    def forward(self, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        """Backbone sources -> ``len(out_channels)`` maps of ``feat_channels``, fine to coarse."""
        self._check_last_source_size(inputs[-1])
        laterals = [lateral(feat) for lateral, feat in zip(self.laterals, self.ssd_neck(inputs))]
        fused: List[Tensor] = [laterals[-1]]
        for lateral, upsample, norm in zip(laterals[-2::-1], self.upsamples[::-1],
                                           self.upsample_norms[::-1]):
            fused.insert(0, lateral + norm(upsample(fused[0], lateral.shape[-2:])))
        return tuple(
            attention(post_fusion(feat))
            for feat, post_fusion, attention in zip(fused, self.post_fusions, self.attentions))

    def _check_last_source_size(self, last_source: Tensor) -> None:
        # Too small a map fails deep inside an extra layer's conv with torch's "Kernel size can't
        # be greater than actual input size", which names neither the source nor the fix.
        height, width = (int(side) for side in last_source.shape[-2:])
        if min(height, width) < self.smallest_last_source_side:
            raise ValueError(
                f'StairNetNeck: the last source is {height}x{width}, but SSD\'s extra layers '
                f'need a side of at least {self.smallest_last_source_side} to give every level '
                f'a map (SSD300\'s VGG16 gives 19x19 at 300x300); use larger input images, or '
                f'extra layers that shrink less (level_strides, level_paddings, '
                f'last_kernel_size)')


def build_attention(cfg: OptConfigType, channels: int) -> nn.Module:
    """``cfg`` built with ``in_channels=channels``; ``nn.Identity`` for None."""
    if cfg is None:
        return nn.Identity()
    check_registered('StairNetNeck', 'attention', cfg,
                     f'Valid configs: {ATTENTION_EXAMPLES}, or any registered module that takes '
                     f'in_channels')
    return MODELS.build(dict(cfg, in_channels=channels))
