"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018, Sect. 3).

CBAM refines a feature map F (N, C, H, W) with a channel gate Mc (Eq. 2) and a spatial gate Ms
(Eq. 3): F' = Mc(F) * F, F'' = Ms(F') * F' (Eq. 1).  The defaults are the configuration the authors
released with their ImageNet weights, so their checkpoints load through
``tools/convert_official_cbam.py``; every ablation of the paper's Tables 1-3 is one argument away.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import Tensor

from mmdet.registry import MODELS
from mmdet.utils import OptConfigType, OptMultiConfig
from . import dispatch

CHANNEL_POOL_TYPES = ('avg', 'max')
SPATIAL_DESCRIPTORS = ('pool', 'conv')
ARRANGEMENTS = ('channel_first', 'spatial_first', 'parallel', 'channel', 'spatial')
# The authors' spatial gate: 7x7 conv without bias, then BatchNorm2d(1, eps=1e-5, momentum=0.01).
AUTHORS_SPATIAL_NORM = dict(type='BN', momentum=0.01, eps=1e-5)


def _choice_error(name: str, value, valid: Sequence) -> ValueError:
    valid_values = ', '.join(map(repr, valid))
    return ValueError(f'CBAM: invalid {name}={value!r}; valid values: {valid_values}')


class ChannelGate(BaseModule):
    """Channel attention Mc (Eq. 2): one MLP shared by globally pooled descriptors.

    Mc(F) = sigmoid(sum_p MLP(Pool_p(F))), MLP = Linear(C, C/r) -> ReLU -> Linear(C/r, C).
    With ``pool_types=('avg',)`` this is the SE squeeze-excitation gate (Table 1).

    Args:
        channels (int): Channels C of the input.
        ratio (int): Reduction ratio r of the MLP's hidden layer. Defaults to 16.
        pool_types (Sequence[str]): Global poolings, a non-empty subset of ('avg', 'max').
        init_cfg (dict, optional): Initialisation config. Defaults to None.
    """

    def __init__(self,
                 channels: int,
                 ratio: int = 16,
                 pool_types: Sequence[str] = CHANNEL_POOL_TYPES,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.pool_types = tuple(pool_types)
        hidden = channels // ratio
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def logits(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> pre-sigmoid attention of shape (N, C, 1, 1)."""
        # Max pooling as the authors' max_pool2d: the gradient goes to the first maximum.
        descriptors = [x.mean((2, 3)) if pool == 'avg' else F.adaptive_max_pool2d(x, 1).flatten(1)
                       for pool in self.pool_types]
        # One MLP call over the stacked descriptors (P, N, C) instead of one per pooling.
        out = self.mlp(torch.stack(descriptors)).sum(0)
        return out[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.logits(x))


class SpatialGate(BaseModule):
    """Spatial attention Ms (Eq. 3): a k x k conv over a 2-D descriptor of the channels.

    The ``'pool'`` descriptor concatenates max and mean over channels in the authors' order
    ``[max, mean]`` (the paper writes [avg; max]; the two differ only by a permutation of the
    conv's input channels, and this order keeps the authors' weights usable). ``'conv'`` is
    Table 2's learned 1x1 conv from C channels to 1.

    Args:
        channels (int): Channels C of the input.
        kernel_size (int): Odd size k of the attention conv. Defaults to 7.
        descriptor (str): 'pool' or 'conv'. Defaults to 'pool'.
        norm_cfg (dict, optional): Norm after the conv. The authors use BN (their released
            weights need it); None gives Eq. 3 as printed, a conv with bias. Defaults to
            ``dict(type='BN', momentum=0.01, eps=1e-5)``.
        init_cfg (dict, optional): Initialisation config. Defaults to None.
    """

    def __init__(self,
                 channels: int,
                 kernel_size: int = 7,
                 descriptor: str = 'pool',
                 norm_cfg: OptConfigType = AUTHORS_SPATIAL_NORM,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.descriptor = descriptor
        if descriptor == 'conv':
            self.compress = nn.Conv2d(channels, 1, kernel_size=1)
        self.spatial = ConvModule(
            2 if descriptor == 'pool' else 1,
            1,
            kernel_size,
            padding=kernel_size // 2,
            norm_cfg=norm_cfg,
            act_cfg=None)

    def logits(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> pre-sigmoid attention of shape (N, 1, H, W)."""
        if self.descriptor == 'pool':
            # torch.max as the authors': the gradient goes to the first maximum.
            desc = torch.cat([x.max(1, keepdim=True).values, x.mean(1, keepdim=True)], dim=1)
        else:
            desc = self.compress(x)
        return self.spatial(desc)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.logits(x))


@MODELS.register_module()
class CBAM(BaseModule):
    """Convolutional Block Attention Module.

    Usable on its own, in ``CBAMResNet``, or as a stock mmdet ResNet plugin::

        plugins=[dict(cfg=dict(type='CBAM'), position='after_conv3')]

    Args:
        in_channels (int): Channels C of the (N, C, H, W) input; the output has the same shape.
        ratio (int): Channel-MLP reduction ratio r (C // r >= 1). Defaults to 16.
        pool_types (Sequence[str]): Channel-gate poolings, Table 1: ('avg',), ('max',) or
            ('avg', 'max'). Defaults to ('avg', 'max').
        spatial_descriptor (str): 'pool' (channel max & mean) or 'conv' (learned 1x1 conv),
            Table 2. Defaults to 'pool'.
        kernel_size (int): Odd, positive spatial conv size (Table 2: 3 or 7). Defaults to 7.
        spatial_norm_cfg (dict, optional): BN after the spatial conv as in the authors' code, or
            None for Eq. 3 without BN. Defaults to ``dict(type='BN', momentum=0.01, eps=1e-5)``.
        arrangement (str): 'channel_first' (Eq. 1), 'spatial_first', 'parallel'
            (sigmoid(Mc + Ms), Table 3), or a single gate: 'channel', 'spatial'.
            Defaults to 'channel_first'.
        impl (str): The implementation: 'auto' (a fused one where it applies: same
            parameters, function and gradients, faster, less memory), 'eager' (the module's
            ops one by one), 'torch' (fused, PyTorch ops) or 'cpp' (fused, C++ kernels, CPU).
            The rules and the process-wide setting for 'auto': ``dispatch.py``. 'torch' and
            'cpp' need the 'channel_first' arrangement and the 'pool' descriptor. Defaults to
            'auto'.
        fused (bool): False is ``impl='eager'`` (the option's older name). Defaults to True.
        init_cfg (dict, optional): Initialisation config. Defaults to None, which gives the
            authors' init: Kaiming-normal (fan_out) convs, PyTorch-default MLP, and a spatial BN
            weight of 0 so the spatial gate starts at sigmoid(0) = 0.5. Without the spatial BN
            (``spatial_norm_cfg=None``, which the authors did not release) the spatial conv's
            weight and bias start at 0 for the same start: a Kaiming-initialised conv with
            bias saturates many gate pixels at init (up to a third of layer3/4's with
            ``kernel_size=3``), whose residual branches then barely learn. The conv's weight
            still gets gradients (its inputs are not 0).
    """
    _abbr_ = 'cbam'  # plugin layers are named after it: ``layer1.0.cbam``, as in the authors' keys

    def __init__(self,
                 in_channels: int,
                 ratio: int = 16,
                 pool_types: Sequence[str] = CHANNEL_POOL_TYPES,
                 spatial_descriptor: str = 'pool',
                 kernel_size: int = 7,
                 spatial_norm_cfg: OptConfigType = AUTHORS_SPATIAL_NORM,
                 arrangement: str = 'channel_first',
                 impl: str = 'auto',
                 fused: bool = True,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        pool_types = (pool_types, ) if isinstance(pool_types, str) else tuple(pool_types)
        self._check_args(in_channels, ratio, pool_types, spatial_descriptor, kernel_size,
                         arrangement)
        self.arrangement = arrangement
        # The arrangement and descriptor the fused implementations compute.
        self.fusable = arrangement == 'channel_first' and spatial_descriptor == 'pool'
        self.impl = self._check_impl(impl, fused, self.fusable)
        self.channel_gate = None
        self.spatial_gate = None
        if arrangement != 'spatial':
            self.channel_gate = ChannelGate(in_channels, ratio, pool_types)
        if arrangement != 'channel':
            self.spatial_gate = SpatialGate(in_channels, kernel_size, spatial_descriptor,
                                            spatial_norm_cfg)
        dispatch.prepare(self)

    @staticmethod
    def _check_args(in_channels, ratio, pool_types, spatial_descriptor, kernel_size,
                    arrangement) -> None:
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'CBAM: in_channels must be a positive int, got {in_channels!r}')
        if not isinstance(ratio, int) or ratio < 1 or in_channels // ratio < 1:
            raise ValueError(
                f'CBAM: ratio must be an int in [1, in_channels] so that in_channels // ratio '
                f'>= 1, got ratio={ratio!r} with in_channels={in_channels}')
        if (not pool_types or len(set(pool_types)) != len(pool_types)
                or not set(pool_types) <= set(CHANNEL_POOL_TYPES)):
            raise _choice_error('pool_types', pool_types,
                                [('avg', ), ('max', ), ('avg', 'max')])
        if spatial_descriptor not in SPATIAL_DESCRIPTORS:
            raise _choice_error('spatial_descriptor', spatial_descriptor, SPATIAL_DESCRIPTORS)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'CBAM: kernel_size must be a positive odd int (e.g. 3 or 7) so '
                             f'the attention map keeps its size, got {kernel_size!r}')
        if arrangement not in ARRANGEMENTS:
            raise _choice_error('arrangement', arrangement, ARRANGEMENTS)

    @staticmethod
    def _check_impl(impl: str, fused: bool, fusable: bool) -> str:
        dispatch.check_impl(impl)
        if not fused:
            if impl not in ('auto', 'eager'):
                raise ValueError(f'CBAM: fused=False (the eager ops) contradicts impl={impl!r}; '
                                 f'give only impl')
            impl = 'eager'
        if impl in ('torch', 'cpp') and not fusable:
            raise ValueError(f'CBAM: impl={impl!r} computes the \'channel_first\' arrangement '
                             f'with the \'pool\' spatial descriptor only; use impl=\'auto\' or '
                             f'\'eager\' for the other options')
        return impl

    @property
    def fused(self) -> bool:
        """Whether calls may take a fused implementation (see ``dispatch.py``)."""
        return self.fusable and self.impl != 'eager'

    @property
    def gates(self) -> Tuple[nn.Module, ...]:
        """The gates in the order a sequential arrangement applies them."""
        if self.arrangement == 'spatial_first':
            return (self.spatial_gate, self.channel_gate)
        return tuple(g for g in (self.channel_gate, self.spatial_gate) if g is not None)

    def init_weights(self) -> None:
        super().init_weights()
        if self.init_cfg is None and self.spatial_gate is not None:
            spatial = self.spatial_gate.spatial
            if spatial.with_norm:
                nn.init.zeros_(spatial.norm.weight)
            else:  # Eq. 3 without BN: a zero conv starts the gate at 0.5 as well
                nn.init.zeros_(spatial.conv.weight)
                nn.init.zeros_(spatial.conv.bias)
            if self.spatial_gate.descriptor == 'conv':
                nn.init.kaiming_normal_(self.spatial_gate.compress.weight, mode='fan_out')
                nn.init.zeros_(self.spatial_gate.compress.bias)

    @torch.no_grad()
    def reset_to_constant_gain(self) -> float:
        """Zero each gate's last layer so that CBAM multiplies any input by one constant.

        Every gate then outputs sigmoid(0) = 0.5, where the sigmoid's gradient is largest, and the
        zeroed layers still receive gradients. Returns the constant gain: 0.5 per sequential gate,
        0.5 for the parallel arrangement.
        """
        if self.channel_gate is not None:
            nn.init.zeros_(self.channel_gate.mlp[2].weight)
            nn.init.zeros_(self.channel_gate.mlp[2].bias)
        if self.spatial_gate is not None:
            spatial = self.spatial_gate.spatial
            last = spatial.norm if spatial.with_norm else spatial.conv
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        return 0.5 if self.arrangement == 'parallel' else 0.5**len(self.gates)

    def attention(self, x: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """The attention maps applied to ``x``: channel (N, C, 1, 1) and spatial (N, 1, H, W).

        A map is None when the arrangement has no such gate. In a sequential arrangement the
        second gate sees the first one's output, as in ``forward``; for 'parallel' the two maps
        are the sigmoids of the two parts of the applied map sigmoid(Mc + Ms).
        """
        if self.arrangement == 'parallel':
            return (torch.sigmoid(self.channel_gate.logits(x)),
                    torch.sigmoid(self.spatial_gate.logits(x)))
        channel = spatial = None
        for gate in self.gates:
            att = torch.sigmoid(gate.logits(x))
            x = x * att
            if gate is self.channel_gate:
                channel = att
            else:
                spatial = att
        return channel, spatial

    def forward_after_norm(self,
                           norm: nn.Module,
                           x: Tensor,
                           overwrite_input: bool = False,
                           shortcut: Optional[Tensor] = None) -> Tensor:
        """``self(norm(x))``; a plain ``nn.BatchNorm2d`` runs inside the fused call, which then
        keeps ``x`` (kept by the norm anyway) instead of the normalised map. With ``shortcut``,
        the end of a residual block: ``relu(self(norm(x)) + shortcut)``.

        Args:
            norm (nn.Module): The norm before CBAM (a block's last BN).
            x (Tensor): The norm's input, (N, C, H, W).
            overwrite_input (bool): ``x`` is a temporary nobody else reads (a block's conv
                output): when no gradient is recorded, the C++ implementation writes the output
                into it instead of a new tensor. Defaults to False.
            shortcut (Tensor, optional): The block's identity branch, (N, C, H, W). When no
                gradient is recorded, the C++ implementation adds it and applies the ReLU in its
                last pass over the map instead of two more passes. Defaults to None.
        """
        return dispatch.forward_after_norm(self, norm, x, overwrite_input, shortcut)

    def block_end(self,
                  norm: nn.Module,
                  x: Tensor,
                  identity: Tensor,
                  relu: nn.Module,
                  conv: Optional[nn.Module] = None,
                  rest: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
        """The end of a residual block with this CBAM after its last norm:
        ``relu(rest(self(norm(x))) + identity)``. Whether the output overwrites ``x`` and
        whether the addition and the ReLU run inside the fused call (hooks on ``conv``,
        ``relu`` or every module decide): ``dispatch.py``, rule 3.

        Args:
            norm (nn.Module): The block's last norm.
            x (Tensor): Its input, the output of ``conv``, (N, C, H, W).
            identity (Tensor): The shortcut branch, (N, C, H, W).
            relu (nn.Module): The block's ReLU.
            conv (nn.Module, optional): The conv that produced ``x``, a temporary of the block.
                Defaults to None: ``x`` is overwritten only if no global hook may hold it.
            rest (Callable, optional): The plugins after CBAM. Defaults to None.
        """
        return dispatch.block_end(self, norm, x, identity, relu, conv, rest)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W), by the implementation ``dispatch.py`` chooses."""
        return dispatch.forward(self, x)

    def eager_forward(self, x: Tensor) -> Tensor:
        """The eager ops: (N, C, H, W) -> (N, C, H, W)."""
        if self.arrangement == 'parallel':
            return x * torch.sigmoid(self.channel_gate.logits(x) + self.spatial_gate.logits(x))
        for gate in self.gates:
            x = gate(x)
        return x
