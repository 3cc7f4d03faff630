"""Which CBAM implementation runs: the one place that decides it.

Implementations (``impl``): ``'eager'`` (the module's ops one by one, ``module.py``: the
reference), ``'torch'`` (one fused autograd function of PyTorch ops, ``torch_impl.py``: any
device and floating dtype), ``'cpp'`` (the same computation in C++ kernels, ``cpp_impl.py``:
CPU). ``'auto'`` lets the rules below choose. A module's own choice (``CBAM(impl=...)``;
``fused=False`` means ``'eager'``) comes first; for ``'auto'`` modules the process-wide choice
applies: ``set_impl`` / ``use_impl``, else the environment read once at import
(``CBAM_MMDET_IMPL=auto|eager|torch|cpp``; ``CBAM_MMDET_NATIVE=0`` means ``'torch'``).

Fast-path conditions (the only written list; README and docs link here). A call runs:

1. **eager** when the choice is 'eager', or when any of these holds (an explicit 'torch' or
   'cpp' then warns once with the reason):

   a. the arrangement is not 'channel_first' or the spatial descriptor is not 'pool' (an
      explicit 'torch' or 'cpp' is refused when the module is built);
   b. the input is not a 4-D floating-point tensor, NCHW- or NHWC-contiguous;
   c. TorchScript tracing or scripting is running (FLOP counters and exporters see the eager
      ops), or ``torch.compile`` is running and either autograd does not record the call
      (inference: the compiler fuses the eager ops with the block's other pointwise work,
      1.05-1.13x plain ResNet-50 against 1.19-1.26x with the kernels as one opaque operator),
      or the C++ kernels cannot take it (rule 2: the PyTorch-ops function is opaque to the
      compiler), or torch is older than 2.4 (no custom operators). Nothing warns while
      compiling (a warning would break the graph);
   d. CBAM has forward hooks or pre-hooks (they must see its input).

   Under autocast (``--amp``) the fused call runs with autocast off and computes in the
   parameters' dtype: a bfloat16/float16 input is converted to float32 (as BatchNorm computes
   under autocast), kept in its own dtype for backward, and the output and input gradient are
   returned in the input's dtype, as the eager ops under autocast return them.

   In ``forward_after_norm`` the norm before CBAM is computed inside the fused call only if it
   is an affine ``nn.BatchNorm2d`` with running statistics (not a subclass such as SyncBN) and
   has no hooks; otherwise it runs as a module and CBAM follows these rules on its output.
2. **cpp** when the choice is 'auto' or 'cpp' and all of these hold (else **torch**; an
   explicit 'cpp' warns once with the reason):

   a. the gates have their default form (MLP Linear-ReLU-Linear with biases; square,
      stride-1, same-padded k x k conv; BatchNorm2d or no norm after it; no activation);
   b. the input is on the CPU, float32 or float64 (or converted to one under autocast),
      NCHW-contiguous and not empty;
   c. every parameter and running statistic has that dtype, is on the CPU and contiguous (the
      kernels read raw memory);
   d. the kernels could be built (no compiler: one warning, then 'torch').

   Under ``torch.compile`` (training calls, 1c) they run as the operator ``cbam_mmdet::cbam_cpu``
   and its backward, which the compiler keeps whole: no graph break, and the rest of the model
   compiles around it.
3. At the end of a residual block (``CBAM.block_end``) without autograd recording:

   a. the output overwrites the block's conv output unless a forward hook (on that conv or
      global) may hold it;
   b. with 'cpp', the shortcut is added and the ReLU applied in the kernels' last pass when
      CBAM is the block's last plugin, the ReLU is a plain ``nn.ReLU`` without hooks, no
      global forward hooks exist, the input is not converted (autocast) and the shortcut has
      the input's shape, dtype, device and NCHW layout; otherwise they run as PyTorch ops
      after CBAM.
"""
import os
import warnings
from contextlib import contextmanager
from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn as nn
from torch import Tensor

from . import cpp_impl
from .batch_norm import count_batch, is_plain_batch_norm
from .call import FusedCall, gate_layout
from .torch_impl import torch_cbam

IMPLS = ('auto', 'eager', 'torch', 'cpp')


def _impl_from_environment() -> str:
    impl = os.environ.get('CBAM_MMDET_IMPL')
    if impl is not None:
        if impl not in IMPLS:
            raise ValueError(f'CBAM_MMDET_IMPL={impl!r} is not one of {IMPLS}')
        return impl
    return 'torch' if os.environ.get('CBAM_MMDET_NATIVE') == '0' else 'auto'


_process_impl = _impl_from_environment()


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f'CBAM: invalid impl={impl!r}; valid values: '
                         f'{", ".join(map(repr, IMPLS))}')
    return impl


def set_impl(impl: str) -> str:
    """Make ``impl`` the choice of every CBAM built with ``impl='auto'``; returns the previous
    choice."""
    global _process_impl
    previous, _process_impl = _process_impl, check_impl(impl)
    return previous


def get_impl() -> str:
    """The process-wide choice (``set_impl``)."""
    return _process_impl


@contextmanager
def use_impl(impl: str):
    """``set_impl(impl)`` inside the block, the previous choice after it."""
    previous = set_impl(impl)
    try:
        yield
    finally:
        set_impl(previous)


def prepare(cbam: nn.Module) -> None:
    """Ready what the fused calls of ``cbam`` need, when it is built, so that the first compiled
    call does not do it: the C++ kernels (``torch.compile`` cannot trace their build) and the
    gates' layout (``call.py``; traced, gathering it took 3.8 s of CBAM-R50's first compiled
    step)."""
    if cbam.fused:
        gate_layout(cbam)
        if cbam.impl in ('auto', 'cpp'):
            cpp_impl.library()


class Choice(NamedTuple):
    """What one call ran: ``impl`` ('eager', 'torch' or 'cpp'); ``with_norm``: the norm before
    CBAM ran inside the fused call; ``with_shortcut``: the shortcut and ReLU were added in its
    last pass."""
    impl: str
    with_norm: bool = False
    with_shortcut: bool = False


_recorders: List[List[Choice]] = []


@contextmanager
def record_choices():
    """Collect the ``Choice`` of every CBAM call inside the block (tests, benchmarks)."""
    choices: List[Choice] = []
    _recorders.append(choices)
    try:
        yield choices
    finally:
        _recorders.remove(choices)


def _record(impl: str, with_norm: bool = False, with_shortcut: bool = False) -> None:
    # The Choice is built only while a recorder listens: torch.compile traces every call.
    if _recorders:
        choice = Choice(impl, with_norm, with_shortcut)
        for choices in _recorders:
            choices.append(choice)


_warned = set()


def _honour_or_warn(wanted: str, ran: str, reason: str) -> None:
    if is_compiling():
        return
    if wanted != ran and wanted in ('torch', 'cpp') and (wanted, reason) not in _warned:
        _warned.add((wanted, reason))
        warnings.warn(f'CBAM: impl={wanted!r} runs {ran!r} for this call: {reason}',
                      RuntimeWarning, stacklevel=4)


def _autocast_takes_device() -> bool:
    try:
        torch.is_autocast_enabled('cpu')
    except TypeError:  # torch < 2.4: no device argument, CPU autocast has its own flag
        return False
    return True


AUTOCAST_TAKES_DEVICE = _autocast_takes_device()


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``, on every supported torch."""
    if AUTOCAST_TAKES_DEVICE:
        return torch.is_autocast_enabled(device_type)
    if device_type == 'cpu':
        return torch.is_autocast_cpu_enabled()
    return torch.is_autocast_enabled()


def is_compiling() -> bool:
    """Whether ``torch.compile`` is tracing (``torch.compiler.is_compiling``: torch >= 2.3)."""
    compiler = getattr(torch, 'compiler', None)
    return bool(compiler is not None and hasattr(compiler, 'is_compiling')
                and compiler.is_compiling())


def global_hooks() -> bool:
    """Whether forward hooks registered for every module exist (torch keeps them private)."""
    return bool(nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _eager_reason(cbam: nn.Module, x: Tensor) -> Optional[str]:
    """Rule 1 (b-d): why this call needs the eager ops (None: it does not)."""
    if not (x.dim() == 4 and x.is_floating_point()
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))):
        return 'the input is not a dense 4-D floating-point tensor'
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return 'TorchScript tracing or scripting is running'
    if _hooked(cbam):
        return 'CBAM has forward hooks'
    return None


def _cpp_reason(call: FusedCall) -> Optional[str]:
    """Rule 2: why the C++ kernels cannot take this call (None: they can)."""
    layout, x = call.layout, call.inp
    dtype = call.compute_dtype or x.dtype
    if layout.cpp_problem is not None:
        return layout.cpp_problem
    if not (x.is_cpu and dtype in cpp_impl.DTYPES and x.is_contiguous() and x.numel() > 0):
        return 'the input is not a non-empty NCHW-contiguous float32/float64 CPU tensor'
    tensors = call.params()
    for norm in (call.norm, layout.spatial_norm):
        if norm is not None:
            tensors = [*tensors, norm.running_mean, norm.running_var]
    # This runs once per block and call: ``is`` and ``is_cpu`` instead of building devices.
    if not all(t.dtype is dtype and t.is_cpu and t.is_contiguous() for t in tensors):
        return 'a parameter or statistic has another dtype or device, or is not contiguous'
    if cpp_impl.library() is None:
        return 'the C++ kernels could not be built (see the earlier warning)'
    return None


def _choice(cbam: nn.Module) -> str:
    return cbam.impl if cbam.impl != 'auto' else _process_impl


def add_shortcut_relu(out: Tensor, shortcut: Optional[Tensor]) -> Tensor:
    """``relu(out + shortcut)``, computed in ``out`` (a fresh output, as mmdet's blocks do), or
    ``out`` itself without a shortcut."""
    return out if shortcut is None else out.add_(shortcut).relu_()


def _shortcut_fits(shortcut: Tensor, x: Tensor) -> bool:
    return (shortcut.shape == x.shape and shortcut.dtype == x.dtype
            and shortcut.device == x.device and shortcut.is_contiguous()
            and not (shortcut.requires_grad and torch.is_grad_enabled()))


LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(x: Tensor, params: List[Tensor]) -> Optional[torch.dtype]:
    """Under autocast, the parameters' dtype for a low-precision input (rule 1, autocast)."""
    dtype = params[0].dtype
    return dtype if x.dtype in LOW_PRECISION and dtype not in LOW_PRECISION else None


# Why a call that a fused implementation could take runs the eager ops under torch.compile.
COMPILE_REASON = 'torch.compile compiles the eager ops of inference calls and of calls the C++ ' \
    'kernels cannot take'


def _fused(cbam: nn.Module, wanted: str, x: Tensor, norm: Optional[nn.BatchNorm2d],
           overwrite_input: bool, shortcut: Optional[Tensor]) -> Optional[Tensor]:
    """One fused call (rule 2), the shortcut and ReLU after it (rule 3); None when the call needs
    the eager ops (rule 1 b-d, warned once for an explicit 'torch' or 'cpp')."""
    reason = _eager_reason(cbam, x)
    if reason is None:
        if autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                out = _fused_call(cbam, wanted, x, norm, overwrite_input, shortcut, True)
        else:
            out = _fused_call(cbam, wanted, x, norm, overwrite_input, shortcut, False)
        if out is not None:
            return out
        reason = COMPILE_REASON
    _honour_or_warn(wanted, 'eager', reason)
    return None


def _fused_call(cbam: nn.Module, wanted: str, x: Tensor, norm: Optional[nn.BatchNorm2d],
                overwrite_input: bool, shortcut: Optional[Tensor],
                autocast: bool) -> Optional[Tensor]:
    call = FusedCall(cbam, x, norm, gate_layout(cbam), overwrite_input)
    if autocast:
        call.compute_dtype = _compute_dtype(x, call.gate_params)
    reason = 'the choice is torch' if wanted == 'torch' else _cpp_reason(call)
    compiling = is_compiling()
    if compiling and (reason is not None or not call.needs_grad or cpp_impl.OPERATOR is None):
        return None
    call.norm_momentum = count_batch(norm)
    if reason is None:
        fuse_shortcut = (shortcut is not None and not call.needs_grad and not compiling
                         and call.compute_dtype is None and _shortcut_fits(shortcut, x))
        if fuse_shortcut:
            call.shortcut = shortcut
        _record('cpp', norm is not None, fuse_shortcut)
        if compiling:
            out = cpp_impl.cpp_cbam_op(call)
        else:
            out = cpp_impl.cpp_cbam(call)
        return out if fuse_shortcut else add_shortcut_relu(out, shortcut)
    _honour_or_warn(wanted, 'torch', reason)
    _record('torch', norm is not None)
    return add_shortcut_relu(torch_cbam(call), shortcut)


def forward(cbam: nn.Module, x: Tensor) -> Tensor:
    """``cbam(x)`` by the implementation the rules choose."""
    wanted = _choice(cbam)
    if wanted != 'eager' and cbam.fusable:
        out = _fused(cbam, wanted, x, None, False, None)
        if out is not None:
            return out
    _record('eager')
    return cbam.eager_forward(x)


def forward_after_norm(cbam: nn.Module, norm: nn.Module, x: Tensor, overwrite_input: bool = False,
                       shortcut: Optional[Tensor] = None) -> Tensor:
    """``relu(cbam(norm(x)) + shortcut)`` (without ``shortcut``: ``cbam(norm(x))``), the norm
    inside the fused call where the rules allow."""
    wanted = _choice(cbam)
    if (wanted != 'eager' and cbam.fusable and is_plain_batch_norm(norm) and not _hooked(norm)):
        out = _fused(cbam, wanted, x, norm, overwrite_input, shortcut)
        if out is not None:
            return out
    return add_shortcut_relu(cbam(norm(x)), shortcut)


def block_end(cbam: nn.Module, norm: nn.Module, x: Tensor, identity: Tensor, relu: nn.Module,
              conv: Optional[nn.Module] = None,
              rest: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """``relu(rest(cbam(norm(x))) + identity)``, ``x`` being ``conv``'s output (rule 3)."""
    hooks = global_hooks()
    private = not (hooks or (conv is not None and _hooked(conv)))
    if rest is None and type(relu) is nn.ReLU and not hooks and not _hooked(relu):
        return forward_after_norm(cbam, norm, x, overwrite_input=private, shortcut=identity)
    out = forward_after_norm(cbam, norm, x, overwrite_input=private)
    if rest is not None:
        out = rest(out)
    out += identity
    return relu(out)
