"""Fast CBAM on CPU: the whole block in C++ (``csrc/cbam_cpu.cpp``), one call per direction.

``NativeCBAMFunction`` computes what ``FusedCBAMFunction`` computes (the 'channel_first'
arrangement with the 'pool' spatial descriptor, optionally preceded by the block's BatchNorm) for
the gates in their default form (MLP Linear-ReLU-Linear; k x k conv, then BatchNorm or nothing,
then sigmoid). Every pass over the feature map reads the *norm's input* x; the normalised map
z = x * scale + shift and y = z * Mc are recomputed where needed and never stored.

* Forward, 3 reads and 1 write (plain BN: 2 and 1): (1) per-plane sum, sum of squares, max and
  min of x give the BN batch statistics and both channel descriptors of z at once (z is affine in
  x per channel, so its spatial maximum sits at x's first max or min); the MLP runs on them;
  (2) per-pixel max (first channel) and mean of y over channels; the k x k conv + norm + sigmoid
  runs on them; (3) the output y * Ms, or in inference at the end of a residual block
  relu(y * Ms + shortcut), which saves the block two more passes (the addition and the ReLU).
  Running statistics of both norms are updated once.
* Backward, 5 reads and 1 write (plain BN: 4 and 1): (4) dL/dMs and the per-plane sums of
  g * Ms and g * Ms * x over (g, x); the spatial gate's backward; (5) the per-plane sums of
  dL/dmean(y) * x; then dL/dMc, the MLP's backward, the BN weight and bias gradients and BN's
  mean terms are (N, C) algebra on these sums plus the max-pooling routes; (6) the input gradient
  in one pass over (g, x), the routes added at the first maxima.
* Saved for backward: x (which BN keeps anyway) and small tensors (Mc, Ms, descriptors, hidden
  activations, first-max indices, statistics): CBAM adds about 0.5% to what plain BN saves.
* Loops over small maps run on one thread. Channel reductions are split into chunks of channels,
  at least one per thread, so that every thread reads the planes it reads in the plane-wise
  passes (what one core's cache holds is not read by the other), and merged in channel order
  (the first maximum still wins).

The kernels are compiled on first use with the system compiler into a per-machine cache
(``cbam_mmdet/utils/cpp_library.py``; about 4 s once). CBAM uses them for contiguous NCHW
float32/float64 CPU tensors whose CBAM has parameters of the same dtype and default-form gates;
otherwise (CUDA, channels_last, half precision, other spatial norms, no compiler, or
``CBAM_MMDET_NATIVE=0``) the PyTorch-ops ``FusedCBAMFunction`` runs.
"""
import ctypes
import os
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from cbam_mmdet.utils.cpp_library import load_library
from .fused_cbam import add_shortcut_relu, check_batch_size, count_batch

SOURCE = Path(__file__).with_name('csrc') / 'cbam_cpu.cpp'
_SUFFIX = {torch.float32: 'f32', torch.float64: 'f64'}
_library = None  # None: not tried yet; False: unavailable


def native_library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or None (disabled with ``CBAM_MMDET_NATIVE=0``, or not buildable)."""
    global _library
    if os.environ.get('CBAM_MMDET_NATIVE', '1') == '0':
        return None
    if _library is None:
        _library = load_library(SOURCE, 'cbam_cpu', 'so CBAM runs its PyTorch-ops fused path '
                                '(correct, slower on CPU)') or False
    return _library or None


class _Gates(ctypes.Structure):
    """Mirror of ``Gates`` in csrc/cbam_cpu.cpp."""
    _fields_ = [(name, ctypes.c_int64) for name in ('n', 'c', 'h', 'w')] + [
        ('norm_mode', ctypes.c_int), ('bn_weight', ctypes.c_void_p), ('bn_bias', ctypes.c_void_p),
        ('bn_running_mean', ctypes.c_void_p), ('bn_running_var', ctypes.c_void_p),
        ('bn_eps', ctypes.c_double), ('bn_momentum', ctypes.c_double),
        ('hidden', ctypes.c_int64), ('w1', ctypes.c_void_p), ('b1', ctypes.c_void_p),
        ('w2', ctypes.c_void_p), ('b2', ctypes.c_void_p), ('use_avg', ctypes.c_int),
        ('use_max', ctypes.c_int), ('k', ctypes.c_int64), ('conv_weight', ctypes.c_void_p),
        ('conv_bias', ctypes.c_void_p), ('spatial_norm_mode', ctypes.c_int),
        ('sn_weight', ctypes.c_void_p), ('sn_bias', ctypes.c_void_p),
        ('sn_running_mean', ctypes.c_void_p), ('sn_running_var', ctypes.c_void_p),
        ('sn_eps', ctypes.c_double), ('sn_momentum', ctypes.c_double), ('threads', ctypes.c_int)
    ]


SAVED_FIELDS = ('sums', 'mean', 'invstd', 'spatial_stats', 'scale', 'shift', 'desc', 'hid', 'mc',
                'smax', 'smean', 'pre', 'ms', 'pixel_of_max', 'channel_of_max')
GRAD_FIELDS = ('input', 'bn_weight', 'bn_bias', 'w1', 'b1', 'w2', 'b2', 'conv_weight',
               'conv_bias', 'sn_weight', 'sn_bias')


class _Saved(ctypes.Structure):
    """Mirror of ``Saved``: the small tensors forward keeps for backward."""
    _fields_ = [(name, ctypes.c_void_p) for name in SAVED_FIELDS]


class _Grads(ctypes.Structure):
    """Mirror of ``Grads``: what backward writes, in ``_gate_params`` order after the input."""
    _fields_ = [(name, ctypes.c_void_p) for name in GRAD_FIELDS]


def _address(tensor: Optional[Tensor]) -> Optional[int]:
    return None if tensor is None else tensor.data_ptr()


def _spatial_norm(cbam: nn.Module) -> Optional[nn.BatchNorm2d]:
    spatial = cbam.spatial_gate.spatial
    return spatial.norm if spatial.with_norm else None


def _gate_params(cbam: nn.Module, norm: Optional[nn.BatchNorm2d], params):
    """The parameters in a fixed order (None where absent): the norm's weight and bias, the
    MLP's w1, b1, w2, b2, the spatial conv's weight and bias, the spatial norm's weight and bias.
    ``params`` (``apply``'s arguments) are used, not the module's attributes: ``functional_call``
    may substitute them."""
    params = list(params)
    norm_params = params[:2] if norm is not None else [None, None]
    rest = iter(params[2:] if norm is not None else params)
    mlp = [next(rest) for _ in range(4)]
    conv = [next(rest), next(rest) if cbam.spatial_gate.spatial.conv.bias is not None else None]
    spatial_norm = [next(rest), next(rest)] if _spatial_norm(cbam) is not None else [None, None]
    return [*norm_params, *mlp, *conv, *spatial_norm]


def _norm_fields(norm: Optional[nn.BatchNorm2d], weight: Optional[Tensor],
                 bias: Optional[Tensor]) -> tuple:
    """A norm's fields of ``_Gates``: mode (0 none, 1 training, 2 evaluation), weight, bias,
    running mean and variance, eps, and the momentum for this batch (counted in training)."""
    if norm is None:
        return (0, None, None, None, None, 0.0, 0.0)
    return (1 if norm.training else 2, _address(weight), _address(bias),
            norm.running_mean.data_ptr(), norm.running_var.data_ptr(), float(norm.eps),
            count_batch(norm))


def _gates(x: Tensor, cbam: nn.Module, norm: Optional[nn.BatchNorm2d], params) -> _Gates:
    """Sizes, parameters and buffers for the kernels; counts a training batch in both norms."""
    n, c, h, w = x.shape
    norm_weight, norm_bias, w1, b1, w2, b2, conv_weight, conv_bias, sn_weight, sn_bias = params
    spatial_norm = _spatial_norm(cbam)
    check_batch_size(norm, (n, c, h, w))
    check_batch_size(spatial_norm, (n, 1, h, w))
    pool_types = cbam.channel_gate.pool_types
    # Positional, in the order of ``Gates``: this runs once per block and call.
    return _Gates(n, c, h, w, *_norm_fields(norm, norm_weight, norm_bias), w1.shape[0],
                  _address(w1), _address(b1), _address(w2), _address(b2),
                  int('avg' in pool_types), int('max' in pool_types), conv_weight.shape[-1],
                  _address(conv_weight), _address(conv_bias),
                  *_norm_fields(spatial_norm, sn_weight, sn_bias), torch.get_num_threads())


def _kernel(direction: str, dtype: torch.dtype):
    return getattr(native_library(), f'cbam_{direction}_{_SUFFIX[dtype]}')


def _forward(inp: Tensor, cbam: nn.Module, norm: Optional[nn.BatchNorm2d], params,
             with_grad: bool, out: Optional[Tensor] = None, shortcut: Optional[Tensor] = None):
    """cbam(norm(inp)) into ``out`` (a new tensor if None; ``inp`` itself is allowed: every
    pixel is read before it is written), or relu(cbam(norm(inp)) + shortcut) with a
    ``shortcut`` of ``inp``'s layout; with ``with_grad`` (no shortcut) also the gates' struct and
    the saved small tensors."""
    n, c, h, w = inp.shape
    gates = _gates(inp, cbam, norm, params)
    saved = {}
    if with_grad:
        pools = gates.use_avg + gates.use_max
        f64, i64 = dict(dtype=torch.float64), dict(dtype=torch.long)
        saved = dict(
            sums=torch.empty(n, c, **f64), mean=torch.empty(c, **f64),
            invstd=torch.empty(c, **f64), spatial_stats=torch.empty(2, **f64),
            scale=inp.new_empty(c), shift=inp.new_empty(c), desc=inp.new_empty(pools, n, c),
            hid=inp.new_empty(pools, n, gates.hidden), mc=inp.new_empty(n, c),
            smax=inp.new_empty(n, h * w), smean=inp.new_empty(n, h * w),
            pre=inp.new_empty(n, h * w), ms=inp.new_empty(n, h * w),
            pixel_of_max=torch.empty(n, c, **i64), channel_of_max=torch.empty(n, h * w, **i64))
    out = torch.empty_like(inp) if out is None else out
    _kernel('forward', inp.dtype)(
        ctypes.c_void_p(inp.data_ptr()), ctypes.c_void_p(_address(shortcut)),
        ctypes.c_void_p(out.data_ptr()), ctypes.byref(gates),
        ctypes.byref(_Saved(**{k: v.data_ptr() for k, v in saved.items()})))
    return out, gates, saved


class NativeCBAMFunction(torch.autograd.Function):
    """(N, C, H, W) -> (N, C, H, W): CBAM, optionally preceded by a BatchNorm2d (module doc).

    ``apply(inp, cbam, norm, *params)`` as ``FusedCBAMFunction.apply``.
    """

    @staticmethod
    def forward(ctx, inp: Tensor, cbam: nn.Module, norm: Optional[nn.BatchNorm2d], *params):
        ordered = _gate_params(cbam, norm, params)
        out, gates, saved = _forward(inp, cbam, norm, ordered, with_grad=True)
        ctx.gates = gates
        ctx.present = [p is not None for p in ordered]
        # Parameters are saved too: autograd then checks they were not modified in place, and
        # (e.g. under checkpointing) backward uses the tensors it unpacks.
        ctx.save_for_backward(inp, *[p for p in ordered if p is not None], *saved.values())
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        inp, *rest = ctx.saved_tensors
        present = iter(rest)
        params = [next(present) if here else None for here in ctx.present]
        small = list(present)
        gates = ctx.gates
        for field, param in zip(('bn_weight', 'w1', 'w2', 'conv_weight', 'sn_weight'),
                                (params[0], params[2], params[4], params[6], params[8])):
            setattr(gates, field, _address(param))
        grads = [torch.empty_like(inp) if ctx.needs_input_grad[0] else None]
        grads += [None if p is None else torch.empty_like(p) for p in params]
        grad = grad.contiguous()
        _kernel('backward', inp.dtype)(
            ctypes.c_void_p(grad.data_ptr()), ctypes.c_void_p(inp.data_ptr()),
            ctypes.byref(gates), ctypes.byref(_Saved(*[t.data_ptr() for t in small])),
            ctypes.byref(_Grads(*[_address(g) for g in grads])))
        # One gradient per ``apply`` argument: the present parameters, in ``params`` order.
        param_grads = [g if p.requires_grad else None
                       for g, p in zip(grads[1:], params) if p is not None]
        return (grads[0], None, None, *param_grads)


def native_supported(cbam: nn.Module, x: Tensor, norm: Optional[nn.BatchNorm2d],
                     params: List[Tensor]) -> bool:
    """Whether the native kernels cover this CBAM (its gates in the default form), the norm
    before it, and the input: contiguous NCHW float32/float64 on CPU, every parameter
    (``params``: ``function_params``) and statistic contiguous in the same dtype and on the CPU
    (the kernels read raw memory)."""
    if not (x.device.type == 'cpu' and x.dtype in _SUFFIX and x.is_contiguous()
            and x.numel() > 0):
        return False
    spatial = cbam.spatial_gate.spatial
    conv = spatial.conv
    spatial_norm = _spatial_norm(cbam)
    if not (type(conv) is nn.Conv2d and conv.in_channels == 2 and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1
            and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.padding == (conv.kernel_size[0] // 2, ) * 2
            and not spatial.with_activation and tuple(spatial.order) == ('conv', 'norm', 'act')
            and (spatial_norm is None or (type(spatial_norm) is nn.BatchNorm2d
                                          and spatial_norm.affine
                                          and spatial_norm.track_running_stats))):
        return False
    tensors = list(params)
    for module in (norm, spatial_norm):
        if module is not None:
            tensors += [module.running_mean, module.running_var]
    # This runs once per block and call: ``is`` and ``is_cpu`` instead of building devices.
    if not all(t.dtype is x.dtype and t.is_cpu and t.is_contiguous() for t in tensors):
        return False
    return native_library() is not None


def native_cbam(inp: Tensor,
                cbam: nn.Module,
                norm: Optional[nn.BatchNorm2d],
                params: List[Tensor],
                needs_grad: bool,
                overwrite_input: bool = False,
                shortcut: Optional[Tensor] = None) -> Tensor:
    """``cbam(inp)``, or ``cbam(norm(inp))`` with ``norm``, through the native kernels; with a
    ``shortcut``, ``relu(... + shortcut)``. ``params`` and ``needs_grad`` are
    ``function_params``'. Without autograd recording, a shortcut of ``inp``'s layout is added in
    the kernels' last pass, and with ``overwrite_input`` the output is written into ``inp``."""
    if needs_grad:
        return add_shortcut_relu(NativeCBAMFunction.apply(inp, cbam, norm, *params), shortcut)
    fuse_shortcut = shortcut is None or (
        shortcut.shape == inp.shape and shortcut.dtype == inp.dtype
        and shortcut.device == inp.device and shortcut.is_contiguous()
        and not (shortcut.requires_grad and torch.is_grad_enabled()))
    with torch.no_grad():
        out = _forward(inp, cbam, norm, _gate_params(cbam, norm, params), with_grad=False,
                       out=inp if overwrite_input else None,
                       shortcut=shortcut if fuse_shortcut else None)[0]
    return out if fuse_shortcut else add_shortcut_relu(out, shortcut)
