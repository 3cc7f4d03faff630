"""What one fused CBAM call reads, by name: built once per call by the dispatcher and handed to
the implementation it chose.

``GateLayout`` holds the facts about a CBAM's gate modules that do not change from call to call
(which parameters exist and where, whether the gates have the form the C++ kernels compute); it
is gathered when the module is built (``dispatch.prepare``) and again whenever one of its gate
modules is replaced (e.g. by ``nn.SyncBatchNorm.convert_sync_batchnorm``). Parameters themselves
are read on every call, so ``torch.func.functional_call`` substitutes them as it does for the
eager module.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .batch_norm import check_batch_size, is_plain_batch_norm

# Names of the parameters of gates in their default form (``GateLayout.names``).
MLP_PARAMS = ('w1', 'b1', 'w2', 'b2')
SPATIAL_PARAMS = ('conv_weight', 'conv_bias', 'sn_weight', 'sn_bias')


def _module_edges(root: nn.Module) -> Tuple[Tuple[nn.Module, str, nn.Module], ...]:
    return tuple((parent, key, child) for parent in root.modules()
                 for key, child in parent._modules.items())


def _cpp_form_problem(cbam: nn.Module) -> Optional[str]:
    """Why the C++ kernels cannot compute these gates (None: they can)."""
    mlp = cbam.channel_gate.mlp
    if not (len(mlp) == 3 and type(mlp[0]) is nn.Linear and type(mlp[1]) is nn.ReLU
            and type(mlp[2]) is nn.Linear and mlp[0].bias is not None
            and mlp[2].bias is not None):
        return 'the channel MLP is not Linear-ReLU-Linear with biases'
    spatial = cbam.spatial_gate.spatial
    conv = spatial.conv
    if not (type(conv) is nn.Conv2d and conv.in_channels == 2 and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1
            and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.padding == (conv.kernel_size[0] // 2, ) * 2):
        return 'the spatial conv is not a square, stride-1, "same"-padded nn.Conv2d'
    if spatial.with_activation or tuple(spatial.order) != ('conv', 'norm', 'act'):
        return 'the spatial ConvModule has an activation or another order'
    if spatial.with_norm and not is_plain_batch_norm(spatial.norm):
        return (f'the spatial norm is {type(spatial.norm).__name__}, not an affine '
                f'nn.BatchNorm2d with running statistics')
    return None


class GateLayout:
    """Facts about a CBAM's gates, gathered once (see the module docstring).

    Attributes:
        slots (list[tuple[nn.Module, str]]): Where each parameter of ``cbam.parameters()`` lives
            (module, attribute), in that order: the channel gate's, then the spatial gate's.
        num_channel (int): How many of them belong to the channel gate.
        names (dict[str, int]): Index in ``slots`` of each default-form parameter by name
            (``MLP_PARAMS``, ``SPATIAL_PARAMS``); only with ``cpp_problem`` None.
        slot_names (list[str]): The name of each slot (None where it has none).
        spatial_norm (nn.Module, optional): The norm after the spatial conv.
        cpp_problem (str, optional): Why the C++ kernels cannot compute these gates.
        use_avg, use_max (bool): The channel gate's poolings.
        hidden (int): Hidden width of the channel MLP.
        kernel_size (int): Size k of the spatial conv.
    """

    def __init__(self, cbam: nn.Module) -> None:
        gates = (cbam.channel_gate, cbam.spatial_gate)
        self._edges = (tuple((cbam, name, gate) for name, gate in
                             (('channel_gate', gates[0]), ('spatial_gate', gates[1]))) +
                       _module_edges(gates[0]) + _module_edges(gates[1]))
        self.slots = []
        for gate in gates:
            for module in gate.modules():
                self.slots += [(module, name) for name, param in module._parameters.items()
                               if param is not None]
        self.num_channel = sum(1 for _ in cbam.channel_gate.parameters())
        spatial = cbam.spatial_gate.spatial
        self.spatial_norm = spatial.norm if spatial.with_norm else None
        self.cpp_problem = _cpp_form_problem(cbam)
        self.use_avg = 'avg' in cbam.channel_gate.pool_types
        self.use_max = 'max' in cbam.channel_gate.pool_types
        self.hidden = cbam.channel_gate.mlp[0].out_features
        self.kernel_size = spatial.conv.kernel_size[0]
        self.names = {}
        if self.cpp_problem is None:
            where = {(id(module), name): index for index, (module, name) in enumerate(self.slots)}
            mlp = cbam.channel_gate.mlp
            owners = dict(w1=(mlp[0], 'weight'), b1=(mlp[0], 'bias'), w2=(mlp[2], 'weight'),
                          b2=(mlp[2], 'bias'), conv_weight=(spatial.conv, 'weight'),
                          conv_bias=(spatial.conv, 'bias'))
            if self.spatial_norm is not None:
                owners.update(sn_weight=(self.spatial_norm, 'weight'),
                              sn_bias=(self.spatial_norm, 'bias'))
            self.names = {name: where[id(module), attr] for name, (module, attr) in owners.items()
                          if (id(module), attr) in where}
        self.slot_names = [None] * len(self.slots)
        for name, index in self.names.items():
            self.slot_names[index] = name

    def still_valid(self) -> bool:
        """No gate module was replaced since the layout was gathered."""
        return all(parent._modules.get(key) is child for parent, key, child in self._edges)


def gate_layout(cbam: nn.Module) -> GateLayout:
    """``cbam``'s layout, gathered again if one of its gate modules was replaced."""
    layout = cbam.__dict__.get('_gate_layout')
    if layout is None or not layout.still_valid():
        layout = GateLayout(cbam)
        cbam.__dict__['_gate_layout'] = layout  # not a module attribute: no state-dict entry
    return layout


class FusedCall:
    """One call of a fused implementation.

    Attributes:
        cbam (CBAM): The module (its gates run as modules in the PyTorch-ops implementation).
        inp (Tensor): CBAM's input, or the norm's input with ``norm``, (N, C, H, W).
        norm (nn.BatchNorm2d, optional): The norm computed inside the call (running statistics,
            eps, mode).
        norm_weight, norm_bias (Tensor, optional): Its affine parameters.
        norm_momentum (float): Momentum of its running statistics for this batch, already counted
            in ``num_batches_tracked`` (0 in evaluation or without a norm); set by the dispatcher
            once it has chosen a fused implementation.
        layout (GateLayout): The gates' layout.
        gate_params (list[Tensor]): ``cbam.parameters()`` as read now (``layout.slots``).
        needs_grad (bool): Whether autograd records the call.
        overwrite_input (bool): The output may be written into ``inp``.
        shortcut (Tensor, optional): To add before a ReLU in the call's last pass (inference).
        compute_dtype (torch.dtype, optional): The dtype to compute in when it is not ``inp``'s
            (under autocast: the parameters' float32 for a bfloat16/float16 ``inp``). The
            implementation then keeps ``inp`` in its own dtype for backward, computes on a
            converted copy and returns the output and the input gradient in ``inp``'s dtype.
            Set by the dispatcher.
    """
    __slots__ = ('cbam', 'inp', 'norm', 'norm_weight', 'norm_bias', 'norm_momentum', 'layout',
                 'gate_params', 'needs_grad', 'overwrite_input', 'shortcut', 'compute_dtype')

    def __init__(self, cbam: nn.Module, inp: Tensor, norm: Optional[nn.BatchNorm2d],
                 layout: GateLayout, overwrite_input: bool = False) -> None:
        check_batch_size(norm, inp.shape)
        self.cbam, self.inp, self.norm, self.layout = cbam, inp, norm, layout
        self.compute_dtype = None
        self.gate_params = [getattr(module, name) for module, name in layout.slots]
        self.norm_weight = self.norm_bias = None
        if norm is not None:
            self.norm_weight, self.norm_bias = norm.weight, norm.bias
        self.needs_grad = torch.is_grad_enabled() and (
            inp.requires_grad or any(p.requires_grad for p in self.params()))
        self.norm_momentum = 0.0
        self.overwrite_input = overwrite_input and not self.needs_grad
        self.shortcut = None

    def computable(self, tensor: Tensor) -> Tensor:
        """``tensor`` in the dtype the call computes in (itself when that is its dtype)."""
        return tensor if self.compute_dtype is None else tensor.to(self.compute_dtype)

    def params(self) -> List[Tensor]:
        """Every parameter the call reads: the norm's weight and bias (with a norm), then
        ``gate_params``; what an autograd function takes to return their gradients."""
        if self.norm is None:
            return self.gate_params
        return [self.norm_weight, self.norm_bias, *self.gate_params]

    def param(self, name: str) -> Optional[Tensor]:
        """A default-form gate parameter by name (``MLP_PARAMS``, ``SPATIAL_PARAMS``)."""
        index = self.layout.names.get(name)
        return None if index is None else self.gate_params[index]
