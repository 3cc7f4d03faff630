"""ResNet backbones with CBAM in every residual block (paper Fig. 3)."""
from functools import partial
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torch import Tensor

from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmdet.models.backbones.resnext import ResNeXt
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from ..layers import CBAM
from ..utils import (DEFAULT_CBAM_CFG, RESNET_NORM_CFG, cbam_plugin, check_plugin_names,
                     check_plugin_positions, check_plugins, check_registered, mmdet_scope_if_unset)
from .resnet_checkpoints import (check_pretrained_resnet, check_start_from_parent,
                                 resolve_start_from_parent)


def residual_tail(block: nn.Module, conv: nn.Module, norm: nn.Module, x: Tensor,
                  plugin_names: Sequence[str], identity: Tensor) -> Tensor:
    """The end of a residual block: ``block.relu(plugins(norm(conv(x))) + identity)``.

    A CBAM right after the norm computes the whole end (``CBAM.block_end``: the norm inside its
    fused call, so the block keeps no normalised map for backward, and in inference its output
    over the conv's, and the shortcut and ReLU in its last pass where the rules allow).
    """
    out = conv(x)
    first = getattr(block, plugin_names[0]) if plugin_names else None
    if isinstance(first, CBAM):
        rest = None
        if len(plugin_names) > 1:
            rest = partial(block.forward_plugin, plugin_names=plugin_names[1:])
        return first.block_end(norm, out, identity, block.relu, conv=conv, rest=rest)
    out = block.forward_plugin(norm(out), plugin_names)
    out += identity
    return block.relu(out)


class CBAMBasicBlock(BasicBlock):
    """mmdet's ``BasicBlock`` with plugin support, so ResNet-18/34 can carry CBAM.

    Plugins go 'after_conv1' (after the first conv's ReLU) or 'after_conv2' (after the last BN,
    before the shortcut addition: CBAM's place in Fig. 3). Other arguments are ``BasicBlock``'s.
    """
    plugin_positions = ('after_conv1', 'after_conv2')
    # The plugin machinery is mmdet's own, shared with its Bottleneck.
    make_block_plugins = Bottleneck.make_block_plugins
    forward_plugin = Bottleneck.forward_plugin

    def __init__(self, inplanes: int, planes: int, plugins: Optional[list] = None, **kwargs):
        super().__init__(inplanes, planes, **kwargs)
        plugins = plugins or []
        check_plugin_positions(type(self).__name__, plugins, type(self))
        self.after_conv1_plugin_names = self.make_block_plugins(
            planes, [p['cfg'] for p in plugins if p['position'] == 'after_conv1'])
        self.after_conv2_plugin_names = self.make_block_plugins(
            planes, [p['cfg'] for p in plugins if p['position'] == 'after_conv2'])

    def forward(self, x: Tensor) -> Tensor:

        def _inner_forward(x):
            out = self.relu(self.norm1(self.conv1(x)))
            out = self.forward_plugin(out, self.after_conv1_plugin_names)
            identity = x if self.downsample is None else self.downsample(x)
            return residual_tail(self, self.conv2, self.norm2, out,
                                 self.after_conv2_plugin_names, identity)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(_inner_forward, x, use_reentrant=False)
        return _inner_forward(x)


class FusedNormBottleneckMixin:
    """mmdet's ``Bottleneck.forward`` with its end (conv3, norm, plugins, shortcut, ReLU) computed
    by ``residual_tail``."""

    def forward(self, x: Tensor) -> Tensor:

        def _inner_forward(x):
            out = self.relu(self.norm1(self.conv1(x)))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv1_plugin_names)
            out = self.relu(self.norm2(self.conv2(out)))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv2_plugin_names)
            identity = x if self.downsample is None else self.downsample(x)
            return residual_tail(self, self.conv3, self.norm3, out,
                                 self.after_conv3_plugin_names if self.with_plugins else [],
                                 identity)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(_inner_forward, x, use_reentrant=True)  # mmdet's default
        return _inner_forward(x)


class CBAMBottleneck(FusedNormBottleneckMixin, Bottleneck):
    """mmdet's ``Bottleneck``; a CBAM plugin after conv3 runs the last norm in its fused path."""


@torch.no_grad()
def start_blocks_as_parent(blocks: Iterable[nn.Module]) -> None:
    """Make each block with a CBAM compute exactly what it computes without it.

    Each CBAM is reset to a constant gain (see ``CBAM.reset_to_constant_gain``) and the norm
    right before it (the block's last) has its affine parameters divided by that gain.
    """
    for block in blocks:
        cbam = getattr(block, 'cbam', None)
        if cbam is None:
            continue
        norm = block.norm3 if isinstance(block, Bottleneck) else block.norm2
        if getattr(norm, 'weight', None) is None:
            raise ValueError(f'start_from_parent needs an affine norm before CBAM, got {norm}')
        gain = cbam.reset_to_constant_gain()
        norm.weight.div_(gain)
        norm.bias.div_(gain)


class CBAMBackboneMixin:
    """Puts CBAM after the last norm of every block of a ResNet-family backbone.

    CBAM is added through mmdet's own ResNet plugin mechanism, so the backbone accepts everything
    its mmdet parent accepts (style, frozen_stages, norm_eval, norm_cfg, with_cp, dcn, plugins, ...)
    and frozen stages and ``norm_eval`` cover CBAM too.

    Args:
        depth (int): Network depth, one of the keys of ``arch_settings``.
        cbam_cfg (dict, optional): Config of the attention module, built with the block's output
            channels as ``in_channels``; None builds the plain parent. With a synchronised
            ``norm_cfg`` (SyncBN, MMSyncBN) CBAM's spatial norm is synchronised too, unless
            ``cbam_cfg`` gives ``spatial_norm_cfg`` (see ``spatial_norm_following``). Defaults
            to ``dict(type='CBAM')`` (the authors' configuration).
        cbam_stages (Sequence[bool], optional): Which stages carry CBAM, one bool per stage.
            Defaults to None: all stages.
        start_from_parent (bool or str): True: after the weights are initialised or loaded,
            make every CBAM scale its input by a constant and divide the preceding norm's affine
            parameters by it, so that the network computes exactly its plain parent (e.g. from
            a plain ImageNet checkpoint) while each gate sits at sigmoid(0) = 0.5, where its
            gradient is largest; never with CBAM weights (it resets the gates). False: CBAM keeps
            what it loads or its own init. Defaults to 'auto': True exactly when the
            ``Pretrained`` checkpoint is a plain ResNet (a model zoo such as torchvision's, or a
            local file without CBAM keys), because CBAMs left at random init distort the
            pretrained features, and those of frozen stages never leave it.
        zero_init_residual (bool): As in mmdet's ResNet, but off by default because the authors
            did not zero the last BN of each block. Defaults to False.
        plugins (list[dict], optional): More plugins, as in mmdet's ResNet; CBAM comes last.
        **kwargs: Everything else mmdet's parent class takes.
    """

    def __init__(self,
                 depth: int,
                 cbam_cfg: Optional[ConfigType] = DEFAULT_CBAM_CFG,
                 cbam_stages: Optional[Sequence[bool]] = None,
                 start_from_parent: Union[bool, str] = 'auto',
                 zero_init_residual: bool = False,
                 plugins: Optional[list] = None,
                 **kwargs) -> None:
        name = type(self).__name__
        if depth not in self.arch_settings:
            raise ValueError(
                f'{name}: invalid depth={depth!r}; valid depths: {sorted(self.arch_settings)}')
        num_stages = kwargs.get('num_stages', 4)
        if cbam_stages is not None and len(cbam_stages) != num_stages:
            raise ValueError(f'{name}: cbam_stages needs one bool per stage ({num_stages}), '
                             f'got {tuple(cbam_stages)}')
        check_start_from_parent(name, start_from_parent)
        if not isinstance(self, ResNeXt) and {'groups', 'base_width'} & set(kwargs):
            raise TypeError(f"{name}: groups and base_width are ResNeXt arguments; for a ResNeXt "
                            f"config use type='CBAMResNeXt'")
        block = self.arch_settings[depth][0]
        plugins = list(plugins or [])
        check_plugins(name, plugins, block, num_stages)
        sources = [f'plugins[{i}]' for i in range(len(plugins))]
        if cbam_cfg is not None:
            check_registered(name, 'cbam_cfg', cbam_cfg)
            plugins.append(cbam_plugin(block, cbam_cfg, cbam_stages,
                                       kwargs.get('norm_cfg', RESNET_NORM_CFG)))
            sources.append('cbam_cfg')
        check_plugin_names(name, plugins, num_stages, sources)
        with mmdet_scope_if_unset():
            super().__init__(
                depth=depth, plugins=plugins or None, zero_init_residual=zero_init_residual,
                **kwargs)
        self.start_from_parent = start_from_parent
        if (zero_init_residual and block in (CBAMBasicBlock, CBAMBottleneck)
                and isinstance(self.init_cfg, list)):
            # mmdet only recognises its own blocks when zeroing the last norm of each block.
            last_norm = 'norm2' if block is CBAMBasicBlock else 'norm3'
            for blk in self.blocks():
                blk.init_cfg = dict(type='Constant', val=0, override=dict(name=last_norm))

    def blocks(self):
        """All residual blocks, stage by stage."""
        for layer_name in self.res_layers:
            yield from getattr(self, layer_name)

    def init_weights(self) -> None:
        first_call = not self.is_init
        if first_call:
            weights = check_pretrained_resnet(
                self, self.blocks(), dict(enumerate(self.stage_blocks)), self.depth,
                issubclass(self.block, Bottleneck), self.start_from_parent)
            from_parent = resolve_start_from_parent(
                type(self).__name__, self.start_from_parent, weights, self.frozen_stages)
        super().init_weights()
        if first_call and from_parent:
            start_blocks_as_parent(self.blocks())


@MODELS.register_module()
class CBAMResNet(CBAMBackboneMixin, ResNet):
    """ResNet (depth 18, 34, 50, 101, 152) with CBAM in every block, see ``CBAMBackboneMixin``.

    Example:
        >>> backbone = CBAMResNet(depth=50)
        >>> [tuple(o.shape) for o in backbone(torch.rand(1, 3, 64, 64))]
        [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
    """
    arch_settings = {
        18: (CBAMBasicBlock, (2, 2, 2, 2)),
        34: (CBAMBasicBlock, (3, 4, 6, 3)),
        **{depth: (CBAMBottleneck, blocks)
           for depth, (_, blocks) in ResNet.arch_settings.items() if depth >= 50},
    }


@MODELS.register_module()
class CBAMResNetV1d(CBAMResNet):
    """ResNetV1d (deep stem, average-pool downsampling; `Bag of Tricks`) with CBAM."""

    def __init__(self, **kwargs) -> None:
        super().__init__(deep_stem=True, avg_down=True, **kwargs)
