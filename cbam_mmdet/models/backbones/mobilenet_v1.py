"""MobileNet v1 (Howard et al., 2017), the backbone of MobileNet-SSD (paper Table 8)."""
from typing import Sequence, Tuple

import torch.nn as nn
from mmcv.cnn import ConvModule, DepthwiseSeparableConvModule
from mmengine.model import BaseModule
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from mmdet.models.utils import make_divisible
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptMultiConfig

# (output channels, stride) of the 13 depthwise-separable layers conv1..conv13 (width 1.0).
ARCH_SETTINGS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                 (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
STEM_CHANNELS = 32


@MODELS.register_module()
class MobileNetV1(BaseModule):
    """MobileNet v1: a 3x3 stride-2 conv (``conv0``) and 13 depthwise-separable layers.

    Every conv is followed by BN and ReLU. Layer i is the attribute ``conv{i}``; ``out_indices``
    picks layers by that index. MobileNet-SSD uses ``out_indices=(11, 13)``: for a 300x300 input,
    conv11 gives (N, 512, 19, 19) and conv13 (N, 1024, 10, 10).

    State-dict keys (what a ``Pretrained`` checkpoint must hold; no classifier):
    ``conv0.conv.weight``, ``conv0.bn.{weight,bias,running_mean,running_var}``, and for i = 1..13
    ``conv{i}.depthwise_conv.conv.weight``, ``conv{i}.depthwise_conv.bn.*``,
    ``conv{i}.pointwise_conv.conv.weight``, ``conv{i}.pointwise_conv.bn.*``.

    Args:
        widen_factor (float): Width multiplier alpha; channels are ``make_divisible(c * alpha,
            8)``. Defaults to 1.0 (3,206,976 parameters).
        out_indices (Sequence[int]): Layers (0..13) whose outputs are returned. Defaults to
            (11, 13).
        frozen_stages (int): Layers conv0..conv{frozen_stages} are frozen (eval mode, no
            gradients); -1 freezes nothing. Defaults to -1.
        norm_cfg (dict): Norm layer config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to ``dict(type='ReLU')``.
        norm_eval (bool): Keep every BN in eval mode (frozen statistics) during training.
            Defaults to False.
        init_cfg (dict or list[dict], optional): Initialisation config, e.g.
            ``dict(type='Pretrained', checkpoint=PATH)``. Defaults to Kaiming-normal (fan_out)
            convs and BN weights 1, biases 0.
    """
    num_layers = len(ARCH_SETTINGS) + 1

    def __init__(self,
                 widen_factor: float = 1.0,
                 out_indices: Sequence[int] = (11, 13),
                 frozen_stages: int = -1,
                 norm_cfg: ConfigType = dict(type='BN'),
                 act_cfg: ConfigType = dict(type='ReLU'),
                 norm_eval: bool = False,
                 init_cfg: OptMultiConfig = [
                     dict(type='Kaiming', layer='Conv2d', mode='fan_out'),
                     dict(type='Constant', val=1, bias=0, layer='_BatchNorm')
                 ]) -> None:
        super().__init__(init_cfg=init_cfg)
        if not set(out_indices) <= set(range(self.num_layers)) or not out_indices:
            raise ValueError(f'MobileNetV1: out_indices must be a non-empty subset of 0..'
                             f'{self.num_layers - 1}, got {out_indices!r}')
        if frozen_stages not in range(-1, self.num_layers):
            raise ValueError(f'MobileNetV1: frozen_stages must be in -1..{self.num_layers - 1}, '
                             f'got {frozen_stages!r}')
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        channels = make_divisible(STEM_CHANNELS * widen_factor, 8)
        self.conv0 = ConvModule(3, channels, 3, stride=2, padding=1, norm_cfg=norm_cfg,
                                act_cfg=act_cfg)
        for i, (out_channels, stride) in enumerate(ARCH_SETTINGS, start=1):
            out_channels = make_divisible(out_channels * widen_factor, 8)
            self.add_module(
                f'conv{i}',
                DepthwiseSeparableConvModule(channels, out_channels, 3, stride=stride, padding=1,
                                             norm_cfg=norm_cfg, act_cfg=act_cfg))
            channels = out_channels
        self._freeze_stages()

    @property
    def layers(self) -> Tuple[nn.Module, ...]:
        return tuple(getattr(self, f'conv{i}') for i in range(self.num_layers))

    def _freeze_stages(self) -> None:
        for layer in self.layers[:self.frozen_stages + 1]:
            layer.eval()
            for param in layer.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'MobileNetV1':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(N, 3, H, W) -> the outputs of the ``out_indices`` layers."""
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
