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
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

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
    return None if _library is False else _library


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


SAVED_NAMES = tuple(name for name, _ in Saved._fields_)  # ``_saved_buffers``' keys
STRUCTS = (Gates, Saved, Grads)  # in the order of ``cbam_struct_layout``'s ``which``


def _address(tensor: Optional[Tensor]) -> Optional[int]:
    return None if tensor is None else tensor.data_ptr()


class NormArgs(NamedTuple):
    """A norm as the kernels read it (its parameters: ``PARAMS``): ``mode`` 0 none, 1 training,
    2 evaluation; running statistics; eps; the momentum of this batch."""
    mode: int = 0
    running_mean: Optional[Tensor] = None
    running_var: Optional[Tensor] = None
    eps: float = 0.0
    momentum: float = 0.0


def _norm_args(norm: Optional[nn.BatchNorm2d], momentum: float) -> NormArgs:
    if norm is None:
        return NormArgs()
    return NormArgs(1 if norm.training else 2, norm.running_mean, norm.running_var, norm.eps,
                    momentum)


def _norm_fields_of(prefix: str, norm: NormArgs) -> Dict[str, object]:
    return {f'{prefix}_mode': norm.mode, f'{prefix}_running_mean': _address(norm.running_mean),
            f'{prefix}_running_var': _address(norm.running_var), f'{prefix}_eps': norm.eps,
            f'{prefix}_momentum': norm.momentum}


def _named_params(call: FusedCall) -> Dict[str, Optional[Tensor]]:
    params = {name: call.param(name) for name in PARAMS[2:]}
    params.update(bn_weight=call.norm_weight, bn_bias=call.norm_bias)
    return params


class GateSizes(NamedTuple):
    """The gates' sizes and poolings (``GateLayout``'s) as the kernels read them."""
    hidden: int
    use_avg: int
    use_max: int
    kernel_size: int


def _make_gates(shape, params: Dict[str, Optional[Tensor]], sizes: GateSizes, bn: NormArgs,
                sn: NormArgs) -> Gates:
    n, c, h, w = shape
    return Gates(n=n, c=c, h=h, w=w, hidden=sizes.hidden, use_avg=sizes.use_avg,
                 use_max=sizes.use_max, k=sizes.kernel_size, threads=torch.get_num_threads(),
                 **{name: _address(params[name]) for name in PARAMS},
                 **_norm_fields_of('bn', bn), **_norm_fields_of('sn', sn))


def _call_norms(call: FusedCall) -> Tuple[GateSizes, NormArgs, NormArgs]:
    """The call's sizes and norms; counts a training batch in the spatial norm (the call
    counted the norm before CBAM)."""
    n, _, h, w = call.inp.shape
    layout = call.layout
    spatial_norm = layout.spatial_norm
    check_batch_size(spatial_norm, (n, 1, h, w))
    sizes = GateSizes(layout.hidden, int(layout.use_avg), int(layout.use_max),
                      layout.kernel_size)
    return (sizes, _norm_args(call.norm, call.norm_momentum),
            _norm_args(spatial_norm, count_batch(spatial_norm)))


def _gates(call: FusedCall, params: Dict[str, Optional[Tensor]]) -> Gates:
    """Sizes, parameters and buffers of the call for the kernels (``_call_norms``)."""
    return _make_gates(call.inp.shape, params, *_call_norms(call))


def _saved_buffers(inp: Tensor, pools: int, hidden: int) -> Dict[str, Tensor]:
    """Empty tensors for what forward keeps (``Saved``), for ``pools`` poolings and an MLP of
    ``hidden`` units."""
    n, c, h, w = inp.shape
    f64, i64 = dict(dtype=torch.float64), dict(dtype=torch.long)
    return dict(
        plane_mean=torch.empty(n, c, **f64), mean=torch.empty(c, **f64),
        invstd=torch.empty(c, **f64), spatial_stats=torch.empty(2, **f64),
        center=inp.new_empty(c), scale=inp.new_empty(c), shift=inp.new_empty(c),
        desc=inp.new_empty(pools, n, c),
        hid=inp.new_empty(pools, n, hidden), mc=inp.new_empty(n, c),
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


def _run_backward(grad: Tensor, inp: Tensor, gates: Gates, saved: Dict[str, Tensor],
                  grads: Dict[str, Tensor], grad_input: Optional[Tensor]) -> None:
    """The gradients of ``grads``' parameters and (unless None) of ``inp`` from ``grad``."""
    _kernel('backward', inp.dtype)(
        ctypes.c_void_p(grad.data_ptr()), ctypes.c_void_p(inp.data_ptr()), ctypes.byref(gates),
        ctypes.byref(Saved(**{name: t.data_ptr() for name, t in saved.items()})),
        ctypes.byref(Grads(input=_address(grad_input),
                           **{name: g.data_ptr() for name, g in grads.items()})))


class CppCBAMFunction(torch.autograd.Function):
    """(N, C, H, W) -> (N, C, H, W): CBAM, optionally preceded by a BatchNorm2d (module doc).

    ``apply(inp, call, *call.params())``: the parameters are passed so that autograd returns
    their gradients.
    """

    @staticmethod
    def forward(ctx, inp: Tensor, call: FusedCall, *params):
        named = _named_params(call)
        gates = _gates(call, named)
        work = call.computable(inp)
        saved = _saved_buffers(work, gates.use_avg + gates.use_max, gates.hidden)
        out = work if work is not inp else torch.empty_like(inp)  # a converted copy is ours
        _run_forward(work, gates, saved, out, None)
        present = [name for name in PARAMS if named[name] is not None]
        # Gradients in ``apply``'s order: the norm's, then the gates' (``GateLayout.slots``).
        ctx.grad_names = (['bn_weight', 'bn_bias'] if call.norm is not None else []) + \
            call.layout.slot_names
        ctx.gates, ctx.present, ctx.saved_names = gates, present, list(saved)
        ctx.compute_dtype = work.dtype
        # Parameters are saved too: autograd then checks they were not modified in place, and
        # (e.g. under checkpointing) backward uses the tensors it unpacks. The input is saved in
        # its own dtype: a converted copy would double a low-precision input's bytes.
        ctx.save_for_backward(inp, *[named[name] for name in present], *saved.values())
        return out.to(inp.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        inp, *rest = ctx.saved_tensors
        input_dtype = inp.dtype
        inp = inp.to(ctx.compute_dtype)
        params = dict(zip(ctx.present, rest))
        small = dict(zip(ctx.saved_names, rest[len(ctx.present):]))
        gates = ctx.gates
        for name, param in params.items():
            setattr(gates, name, param.data_ptr())
        grads = {name: torch.empty_like(param) for name, param in params.items()}
        grad_input = torch.empty_like(inp) if ctx.needs_input_grad[0] else None
        _run_backward(grad.to(ctx.compute_dtype).contiguous(), inp, gates, small, grads,
                      grad_input)
        param_grads = [grads[name] if needed else None
                       for name, needed in zip(ctx.grad_names, ctx.needs_input_grad[2:])]
        if grad_input is not None:
            grad_input = grad_input.to(input_dtype)
        return (grad_input, None, *param_grads)


def cpp_cbam(call: FusedCall) -> Tensor:
    """The call's ``cbam(norm(inp))`` through the C++ kernels; without autograd recording the
    output goes into ``inp`` with ``call.overwrite_input``, and ``call.shortcut`` (when given)
    is added before a ReLU in the last pass."""
    if call.needs_grad:
        return CppCBAMFunction.apply(call.inp, call, *call.params())
    inp = call.computable(call.inp)
    with torch.no_grad():
        gates = _gates(call, _named_params(call))
        out = inp if call.overwrite_input or inp is not call.inp else torch.empty_like(inp)
        _run_forward(inp, gates, {}, out, call.shortcut)
    return out.to(call.inp.dtype)


# Under ``torch.compile`` the kernels run as two functional operators that the compiler keeps
# whole (it cannot trace ctypes calls). ``cbam_mmdet::cbam_cpu`` returns the output, the updated
# running statistics and, with ``with_saved``, the saved tensors (``Saved``);
# ``cbam_mmdet::cbam_cpu_backward`` returns the input gradient, then those of ``params``.
# Arguments: ``params`` the parameters present, in ``PARAMS`` order, and ``present`` which those
# are (1/0 per name); ``stats`` the running statistics [bn mean, bn var, sn mean, sn var], empty
# where a norm is absent; ``sizes`` (``GateSizes``); ``norms`` [bn mode, eps, momentum, sn mode,
# eps, momentum].
NUM_STATS = 4


def _op_gates(shape, params: List[Tensor], present: List[int], stats: List[Optional[Tensor]],
              sizes: List[int], norms: List[float]) -> Gates:
    found = iter(params)
    named = {name: next(found) if here else None for name, here in zip(PARAMS, present)}
    stats = [t if t is not None and t.numel() else None for t in stats]
    bn = NormArgs(int(norms[0]), stats[0], stats[1], norms[1], norms[2])
    sn = NormArgs(int(norms[3]), stats[2], stats[3], norms[4], norms[5])
    return _make_gates(shape, named, GateSizes(*sizes), bn, sn)


def _op_saved_buffers(inp: Tensor, sizes: List[int], with_saved: bool) -> Dict[str, Tensor]:
    sizes = GateSizes(*sizes)
    return _saved_buffers(inp, sizes.use_avg + sizes.use_max, sizes.hidden) if with_saved else {}


def _define_operators() -> Optional[Callable]:
    """Register the two operators and return the forward one; None on torch < 2.4, which has
    no ``torch.library.custom_op`` (``torch.compile`` then traces the eager ops)."""
    if not hasattr(torch.library, 'custom_op'):
        return None

    @torch.library.custom_op('cbam_mmdet::cbam_cpu', mutates_args=())
    def cbam_cpu_op(inp: Tensor, params: List[Tensor], present: List[int], stats: List[Tensor],
                    sizes: List[int], norms: List[float], with_saved: bool) -> List[Tensor]:
        updated = [t.clone() for t in stats]  # the kernels update these copies
        gates = _op_gates(inp.shape, params, present, updated, sizes, norms)
        saved = _op_saved_buffers(inp, sizes, with_saved)
        out = torch.empty_like(inp)
        _run_forward(inp, gates, saved, out, None)
        return [out, *updated, *saved.values()]

    @cbam_cpu_op.register_fake
    def _(inp, params, present, stats, sizes, norms, with_saved):
        return [torch.empty_like(inp), *[torch.empty_like(t) for t in stats],
                *_op_saved_buffers(inp, sizes, with_saved).values()]

    @torch.library.custom_op('cbam_mmdet::cbam_cpu_backward', mutates_args=())
    def cbam_cpu_backward_op(grad: Tensor, inp: Tensor, params: List[Tensor], present: List[int],
                             saved: List[Tensor], sizes: List[int],
                             norms: List[float]) -> List[Tensor]:
        gates = _op_gates(inp.shape, params, present, [None] * NUM_STATS, sizes, norms)
        names = [name for name, here in zip(PARAMS, present) if here]
        grads = {name: torch.empty_like(p) for name, p in zip(names, params)}
        grad_input = torch.empty_like(inp)
        _run_backward(grad.contiguous(), inp, gates, dict(zip(SAVED_NAMES, saved)), grads,
                      grad_input)
        return [grad_input, *grads.values()]

    @cbam_cpu_backward_op.register_fake
    def _(grad, inp, params, present, saved, sizes, norms):
        return [torch.empty_like(inp)] + [torch.empty_like(p) for p in params]

    def setup_context(ctx, inputs, output) -> None:
        inp, params, present, _, sizes, norms, _ = inputs
        ctx.present, ctx.sizes, ctx.norms, ctx.num_params = present, sizes, norms, len(params)
        ctx.save_for_backward(inp, *params, *output[1 + NUM_STATS:])

    def backward(ctx, grads):
        inp, *rest = ctx.saved_tensors
        params, saved = rest[:ctx.num_params], rest[ctx.num_params:]
        grad_input, *param_grads = cbam_cpu_backward_op(grads[0], inp, params, ctx.present,
                                                        saved, ctx.sizes, ctx.norms)
        return grad_input, param_grads, None, [None] * NUM_STATS, None, None, None

    cbam_cpu_op.register_autograd(backward, setup_context=setup_context)
    return cbam_cpu_op


OPERATOR = _define_operators()


def cpp_cbam_op(call: FusedCall) -> Tensor:
    """``cpp_cbam`` through the ``cbam_mmdet::cbam_cpu`` operator (under ``torch.compile``): the
    same kernels and results; the output is a new tensor and ``call.shortcut`` is not used."""
    sizes, bn, sn = _call_norms(call)
    named = _named_params(call)
    inp = call.computable(call.inp)
    stats = [bn.running_mean, bn.running_var, sn.running_mean, sn.running_var]
    out, *updated = OPERATOR(
        inp, [named[name] for name in PARAMS if named[name] is not None],
        [int(named[name] is not None) for name in PARAMS],
        [inp.new_empty(0) if t is None else t for t in stats], list(sizes),
        [bn.mode, bn.eps, bn.momentum, sn.mode, sn.eps, sn.momentum],
        call.needs_grad)[:1 + NUM_STATS]
    with torch.no_grad():
        for running, new in zip(stats, updated):
            if running is not None:
                running.copy_(new)
    return out.to(call.inp.dtype)


def struct_layout(which: int) -> list:
    """What the compiled library reports for ``STRUCTS[which]``: its size, then the offset of
    each field in declaration order."""
    lib = library()
    values = (ctypes.c_int64 * 64)()
    count = lib.cbam_struct_layout(ctypes.c_int(which), values)
    return list(values[:count])
