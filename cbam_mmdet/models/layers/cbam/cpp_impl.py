"""The fused CBAM in C++ (``csrc/cbam_cpu.cpp``, CPU): the whole block, one call per direction.

``CppCBAMFunction`` computes what the PyTorch-ops implementation computes (the 'channel_first'
arrangement with the 'pool' spatial descriptor, optionally preceded by the block's BatchNorm) for
the gates in their default form (MLP Linear-ReLU-Linear; k x k conv, then BatchNorm or nothing,
then sigmoid). Every pass over the feature map reads the *norm's input* x; the normalised map
z = (x - center) * scale + shift (center: the norm's mean rounded, so that no digits cancel at a
large mean offset) and y = z * Mc are recomputed where needed and never stored.

* Forward, 3 reads and 1 write (plain BN: 2 and 1): (1) per-plane mean, squared deviations,
  max and min of x give the BN batch statistics (two passes over each plane while it is in
  cache, merged across planes as Chan et al.: exact at any mean offset) and both channel
  descriptors of z at once (z is affine in x per channel, so its spatial maximum sits at x's
  first max or min); the MLP runs on them; (2) per-pixel max (first channel) and mean of y over
  channels; the k x k conv + norm + sigmoid runs on them; (3) the output y * Ms, or in inference
  at the end of a residual block relu(y * Ms + shortcut), which saves the block two more passes
  (the addition and the ReLU). Running statistics of both norms are updated once.
* Backward, 5 reads and 1 write (plain BN: 4 and 1): (4) dL/dMs and the per-plane sums of
  g * Ms and g * Ms * (x - mean) over (g, x); the spatial gate's backward; (5) the per-plane
  sums of dL/dmean(y) * (x - mean); then dL/dMc, the MLP's backward, the BN weight and bias
  gradients and BN's mean terms are (N, C) algebra on these sums plus the max-pooling routes;
  (6) the input gradient in one pass over (g, x), the routes added at the first maxima. Sums
  weighted by x are taken around the norm's mean, as PyTorch's BatchNorm backward does.
* Saved for backward: x (which BN keeps anyway) and small tensors (Mc, Ms, descriptors, hidden
  activations, first-max indices, statistics): CBAM adds about 0.5% to what plain BN saves.
* Loops over small maps run on one thread. Channel reductions are split into chunks of channels,
  at least one per thread, so that every thread reads the planes it reads in the plane-wise
  passes (what one core's cache holds is not read by the other), and merged in channel order
  (the first maximum still wins).

The kernels are compiled on first use with the system compiler into a per-machine cache
(``cbam_mmdet/runtime/cpp_library.py``; about 4 s once). Which calls they get: ``dispatch.py``.
"""
import ctypes
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch import Tensor

from cbam_mmdet.runtime.cpp_library import load_library
from .batch_norm import check_batch_size, count_batch
from .call import MLP_PARAMS, FusedCall

SOURCE = Path(__file__).with_name('csrc') / 'cbam_cpu.cpp'
DTYPES = {torch.float32: 'f32', torch.float64: 'f64'}
_library = None  # None: not tried yet; False: unavailable


def library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or None where they cannot be built (warned once)."""
    global _library
    if _library is None:
        _library = load_library(SOURCE, 'cbam_cpu', 'so CBAM runs its PyTorch-ops fused path '
                                '(correct, slower on CPU)') or False
    return _library or None


def _pointers(*names: str) -> list:
    return [(name, ctypes.c_void_p) for name in names]


def _norm_fields(prefix: str) -> list:
    return ([(f'{prefix}_mode', ctypes.c_int)] +
            _pointers(f'{prefix}_weight', f'{prefix}_bias', f'{prefix}_running_mean',
                      f'{prefix}_running_var') +
            [(f'{prefix}_eps', ctypes.c_double), (f'{prefix}_momentum', ctypes.c_double)])


class Gates(ctypes.Structure):
    """``Gates`` of csrc/cbam_cpu.cpp: sizes, and the parameters and buffers of the norm before
    CBAM (``bn_*``) and of CBAM's gates (MLP ``w1``...``b2``, spatial conv, spatial norm
    ``sn_*``). Norm modes: 0 none, 1 training, 2 evaluation."""
    _fields_ = ([(name, ctypes.c_int64) for name in ('n', 'c', 'h', 'w')] + _norm_fields('bn') +
                [('hidden', ctypes.c_int64)] + _pointers(*MLP_PARAMS) +
                [('use_avg', ctypes.c_int), ('use_max', ctypes.c_int), ('k', ctypes.c_int64)] +
                _pointers('conv_weight', 'conv_bias') + _norm_fields('sn') +
                [('threads', ctypes.c_int)])


class Saved(ctypes.Structure):
    """``Saved``: the small tensors forward keeps for backward (all null in inference)."""
    _fields_ = _pointers('plane_mean', 'mean', 'invstd', 'spatial_stats', 'center', 'scale',
                         'shift', 'desc', 'hid', 'mc', 'smax', 'smean', 'pre', 'ms',
                         'pixel_of_max', 'channel_of_max')


# The parameters the kernels read, by their ``Gates`` and ``Grads`` names.
PARAMS = ('bn_weight', 'bn_bias', *MLP_PARAMS, 'conv_weight', 'conv_bias', 'sn_weight',
          'sn_bias')


class Grads(ctypes.Structure):
    """``Grads``: what backward writes, each nullable."""
    _fields_ = _pointers('input', *PARAMS)


STRUCTS = (Gates, Saved, Grads)  # in the order of ``cbam_struct_layout``'s ``which``


def _address(tensor: Optional[Tensor]) -> Optional[int]:
    return None if tensor is None else tensor.data_ptr()


def _norm_arguments(prefix: str, norm: Optional[nn.BatchNorm2d],
                    momentum: float) -> Dict[str, object]:
    """A norm's mode, statistics and momentum for ``Gates`` (its parameters: ``PARAMS``)."""
    if norm is None:
        return {f'{prefix}_mode': 0}
    return {f'{prefix}_mode': 1 if norm.training else 2,
            f'{prefix}_running_mean': norm.running_mean.data_ptr(),
            f'{prefix}_running_var': norm.running_var.data_ptr(), f'{prefix}_eps': norm.eps,
            f'{prefix}_momentum': momentum}


def _named_params(call: FusedCall) -> Dict[str, Optional[Tensor]]:
    params = {name: call.param(name) for name in PARAMS[2:]}
    params.update(bn_weight=call.norm_weight, bn_bias=call.norm_bias)
    return params


def _gates(call: FusedCall, params: Dict[str, Optional[Tensor]]) -> Gates:
    """Sizes, parameters and buffers for the kernels; counts a training batch in the spatial
    norm (the call counted the norm before CBAM)."""
    n, c, h, w = call.inp.shape
    layout = call.layout
    spatial_norm = layout.spatial_norm
    check_batch_size(spatial_norm, (n, 1, h, w))
    return Gates(
        n=n, c=c, h=h, w=w, hidden=layout.hidden, use_avg=layout.use_avg,
        use_max=layout.use_max, k=layout.kernel_size, threads=torch.get_num_threads(),
        **{name: _address(params[name]) for name in PARAMS},
        **_norm_arguments('bn', call.norm, call.norm_momentum),
        **_norm_arguments('sn', spatial_norm, count_batch(spatial_norm)))


def _saved_buffers(inp: Tensor, gates: Gates) -> Dict[str, Tensor]:
    n, c, h, w = inp.shape
    pools = gates.use_avg + gates.use_max
    f64, i64 = dict(dtype=torch.float64), dict(dtype=torch.long)
    return dict(
        plane_mean=torch.empty(n, c, **f64), mean=torch.empty(c, **f64),
        invstd=torch.empty(c, **f64), spatial_stats=torch.empty(2, **f64),
        center=inp.new_empty(c), scale=inp.new_empty(c), shift=inp.new_empty(c),
        desc=inp.new_empty(pools, n, c),
        hid=inp.new_empty(pools, n, gates.hidden), mc=inp.new_empty(n, c),
        smax=inp.new_empty(n, h * w), smean=inp.new_empty(n, h * w), pre=inp.new_empty(n, h * w),
        ms=inp.new_empty(n, h * w), pixel_of_max=torch.empty(n, c, **i64),
        channel_of_max=torch.empty(n, h * w, **i64))


def _kernel(direction: str, dtype: torch.dtype):
    return getattr(library(), f'cbam_{direction}_{DTYPES[dtype]}')


def _run_forward(inp: Tensor, gates: Gates, saved: Dict[str, Tensor], out: Tensor,
                 shortcut: Optional[Tensor]) -> None:
    """cbam(norm(inp)) into ``out`` (``inp`` itself is allowed: every pixel is read before it is
    written), or relu(cbam(norm(inp)) + shortcut); fills ``saved`` when given."""
    _kernel('forward', inp.dtype)(
        ctypes.c_void_p(inp.data_ptr()), ctypes.c_void_p(_address(shortcut)),
        ctypes.c_void_p(out.data_ptr()), ctypes.byref(gates),
        ctypes.byref(Saved(**{name: t.data_ptr() for name, t in saved.items()})))


class CppCBAMFunction(torch.autograd.Function):
    """(N, C, H, W) -> (N, C, H, W): CBAM, optionally preceded by a BatchNorm2d (module doc).

    ``apply(inp, call, *call.params())``: the parameters are passed so that autograd returns
    their gradients.
    """

    @staticmethod
    def forward(ctx, inp: Tensor, call: FusedCall, *params):
        named = _named_params(call)
        gates = _gates(call, named)
        saved = _saved_buffers(inp, gates)
        out = torch.empty_like(inp)
        _run_forward(inp, gates, saved, out, None)
        present = [name for name in PARAMS if named[name] is not None]
        # Gradients in ``apply``'s order: the norm's, then the gates' (``GateLayout.slots``).
        ctx.grad_names = (['bn_weight', 'bn_bias'] if call.norm is not None else []) + \
            call.layout.slot_names
        ctx.gates, ctx.present, ctx.saved_names = gates, present, list(saved)
        # Parameters are saved too: autograd then checks they were not modified in place, and
        # (e.g. under checkpointing) backward uses the tensors it unpacks.
        ctx.save_for_backward(inp, *[named[name] for name in present], *saved.values())
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        inp, *rest = ctx.saved_tensors
        params = dict(zip(ctx.present, rest))
        small = dict(zip(ctx.saved_names, rest[len(ctx.present):]))
        gates = ctx.gates
        for name, param in params.items():
            setattr(gates, name, param.data_ptr())
        grads = {name: torch.empty_like(param) for name, param in params.items()}
        grad_input = torch.empty_like(inp) if ctx.needs_input_grad[0] else None
        grad = grad.contiguous()
        _kernel('backward', inp.dtype)(
            ctypes.c_void_p(grad.data_ptr()), ctypes.c_void_p(inp.data_ptr()),
            ctypes.byref(gates),
            ctypes.byref(Saved(**{name: t.data_ptr() for name, t in small.items()})),
            ctypes.byref(Grads(input=_address(grad_input),
                               **{name: g.data_ptr() for name, g in grads.items()})))
        param_grads = [grads[name] if needed else None
                       for name, needed in zip(ctx.grad_names, ctx.needs_input_grad[2:])]
        return (grad_input, None, *param_grads)


def cpp_cbam(call: FusedCall) -> Tensor:
    """The call's ``cbam(norm(inp))`` through the C++ kernels; without autograd recording the
    output goes into ``inp`` with ``call.overwrite_input``, and ``call.shortcut`` (when given)
    is added before a ReLU in the last pass."""
    if call.needs_grad:
        return CppCBAMFunction.apply(call.inp, call, *call.params())
    inp = call.inp
    with torch.no_grad():
        gates = _gates(call, _named_params(call))
        out = inp if call.overwrite_input else torch.empty_like(inp)
        _run_forward(inp, gates, {}, out, call.shortcut)
    return out


def struct_layout(which: int) -> list:
    """What the compiled library reports for ``STRUCTS[which]``: its size, then the offset of
    each field in declaration order."""
    lib = library()
    values = (ctypes.c_int64 * 64)()
    count = lib.cbam_struct_layout(ctypes.c_int(which), values)
    return list(values[:count])
