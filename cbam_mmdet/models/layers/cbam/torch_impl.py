"""The fused CBAM as PyTorch ops: one autograd function that stores the input only and
recomputes the rest (any device and floating dtype, any gate configuration).

CBAM's arithmetic is tiny (0.16% of ResNet-50's FLOPs, paper Table 4); written op by op it is
bound by memory traffic and by the number of full-size (N, C, H, W) tensors it writes and keeps
for backward. ``FusedCBAMFunction`` computes the 'channel_first' arrangement with the 'pool'
spatial descriptor (the authors' layout) as follows:

* Full-size work is a handful of PyTorch ops: the channel descriptors (``mean``, ``amax``), one
  product y = Mc * F that becomes the output in place (y *= Ms), the channel max and mean of y
  (``amax``, ``mean``); no ``cat`` of full-size maps, no max-with-indices (10x slower than
  ``amax`` on CPU). (The channel mean as ``bmm(Mc, F) / C`` made the whole backbone's inference
  slower on 2 threads although the op itself is as fast: y exists anyway.)
* Max pooling routes its gradient to the first maximum, as the authors' ``max_pool2d`` and
  ``torch.max``; in training the first maximum is found in two cheap steps: ``amax`` over rows
  (spatial) or blocks of 16 channels, then a search in the small row/block-max tensor and in the
  one selected row/block.
* Only the input and small tensors (Mc, Ms, first-max indices) are saved. Backward recomputes
  what it needs: dL/dMs and dL/dMc are batched matrix products with g * F, the input gradient is
  two fused multiply-adds plus scatters for the max-pooling routes.
* The gates' small sub-networks (shared MLP; k x k conv + norm) run under autograd inside the
  function on detached descriptors, so any norm/activation config works and their norms' running
  statistics are updated exactly once, as in the eager module.
* Optionally the norm before CBAM (a residual block's last ``nn.BatchNorm2d``) runs inside the
  function: it receives the norm's input, which the norm keeps for its own backward anyway, and
  recomputes the normalised map in backward, so a CBAM block keeps no full-size tensor more than
  the plain block.

Which implementation runs where: ``dispatch.py``.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .call import FusedCall

# Channel-block count for the two-step first-argmax over channels (a divisor of C is used).
_CHANNEL_BLOCKS = (16, 8, 4, 2, 1)


def _first_index_of(values: Tensor, target: Tensor, dim: int) -> Tensor:
    """Index of the first element along ``dim`` equal to ``target`` (broadcast along ``dim``).

    ``argmax`` over a strided dimension is slow on CPU, ``amax`` is not: the first match has the
    largest of the descending weights size, size - 1, ..., 1.
    """
    size = values.shape[dim]
    weights = torch.arange(size, 0, -1, dtype=torch.int16 if size < 2**15 else torch.int32,
                           device=values.device).view([-1] + [1] * (values.dim() - dim - 1))
    first = torch.where(values == target, weights, 0).amax(dim)
    return size - first.long()


def _first_argmax_channels(y: Tensor) -> Tuple[Tensor, Tensor]:
    """Channel max of y (N, C, HW) and the index of its first maximum, both (N, HW)."""
    n, c, hw = y.shape
    blocks = next(b for b in _CHANNEL_BLOCKS if c % b == 0)
    yb = y.reshape(n, blocks, c // blocks, hw)
    block_max = yb.amax(2)  # (N, B, HW), one full-size read
    smax = block_max.amax(1, keepdim=True)
    block = _first_index_of(block_max, smax, 1)  # the first block holding the maximum
    in_block = yb.gather(1, block[:, None, None, :].expand(n, 1, c // blocks, hw))[:, 0]
    inside = _first_index_of(in_block, smax, 1)
    return smax[:, 0], block * (c // blocks) + inside


def _first_argmax_spatial(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Spatial max of x (N, C, H, W) and the flat index of its first maximum, both (N, C)."""
    n, c, h, w = x.shape
    row_max = x.amax(3)  # (N, C, H)
    row = row_max.argmax(2)
    col = x.gather(2, row[:, :, None, None].expand(n, c, 1, w)).argmax(3)[:, :, 0]
    return row_max.amax(2), row * w + col


def _batch_norm_forward(call: FusedCall, inp: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The call's norm applied to ``inp`` (its input in the compute dtype) as
    ``nn.BatchNorm2d.forward`` computes it (running statistics updated with the call's momentum),
    plus the per-channel mean and inverse std it normalised with."""
    norm = call.norm
    x, mean, invstd = torch.native_batch_norm(inp, call.norm_weight, call.norm_bias,
                                              norm.running_mean, norm.running_var, norm.training,
                                              call.norm_momentum, norm.eps)
    if not norm.training:
        mean, invstd = norm.running_mean, torch.rsqrt(norm.running_var + norm.eps)
    return x, mean, invstd


def _cbam_forward(x: Tensor, channel_mlp: nn.Module, pool_types: Sequence[str],
                  spatial_net: nn.Module, with_grad: bool, x_is_temporary: bool = False):
    """Forward of the fused CBAM. Without ``with_grad`` it returns the output only; with it, also
    what backward needs: small autograd graphs of the gates and first-max indices. A temporary
    ``x`` (the fused norm's output) becomes the output in place."""
    n, c, h, w = x.shape
    descriptors, pixel_of_max = [], None
    for pool in pool_types:
        if pool == 'avg':
            descriptors.append(x.mean((2, 3)))
        elif with_grad:
            channel_max, pixel_of_max = _first_argmax_spatial(x)
            descriptors.append(channel_max)
        else:
            descriptors.append(x.amax((2, 3)))
    with torch.set_grad_enabled(with_grad):
        leaves = [d.detach().requires_grad_(with_grad) for d in descriptors]
        channel_att = torch.sigmoid(channel_mlp(torch.stack(leaves)).sum(0))  # (N, C)
    ca = channel_att.detach()
    y = x.mul_(ca[:, :, None, None]) if x_is_temporary else x * ca[:, :, None, None]
    if with_grad:
        smax, channel_of_max = _first_argmax_channels(y.reshape(n, c, h * w))
    else:
        smax, channel_of_max = y.amax(1), None
    smean = y.mean(1)
    with torch.set_grad_enabled(with_grad):
        smax = smax.reshape(n, 1, h, w).detach().requires_grad_(with_grad)
        smean = smean.reshape(n, 1, h, w).detach().requires_grad_(with_grad)
        desc = torch.cat([smax, smean], 1)
        if with_grad:  # channels_last makes the 2-channel conv's backward ~3x faster on CPU
            desc = desc.contiguous(memory_format=torch.channels_last)
        spatial_att = torch.sigmoid(spatial_net(desc)).contiguous()  # (N, 1, H, W)
    out = y.mul_(spatial_att.detach())
    if not with_grad:
        return out
    graphs = (channel_att, leaves, spatial_att, smax, smean)
    return out, ca, spatial_att.detach(), pixel_of_max, channel_of_max, graphs


def _keep(tensor: Tensor) -> Tensor:
    return tensor


def _small_grads(output: Tensor, grad: Tensor, inputs: List[Tensor],
                 params: List[nn.Parameter]) -> Tuple[List[Tensor], List[Optional[Tensor]]]:
    """Gradients of a gate's small graph w.r.t. its inputs and its trainable parameters."""
    trainable = [p for p in params if p.requires_grad]
    # The graph is kept (it is small) for a second backward through a retained outer graph.
    grads = torch.autograd.grad(output, inputs + trainable, grad, retain_graph=True,
                                allow_unused=True)
    found = iter(grads[len(inputs):])
    return list(grads[:len(inputs)]), [next(found) if p.requires_grad else None for p in params]


class FusedCBAMFunction(torch.autograd.Function):
    """(N, C, H, W) -> (N, C, H, W): CBAM, optionally preceded by a BatchNorm2d (module doc).

    ``apply(inp, call, *call.params())``: the parameters are passed so that autograd returns
    their gradients.
    """

    @staticmethod
    def forward(ctx, inp: Tensor, call: FusedCall, *params):
        norm = call.norm
        work = call.computable(inp)
        x, mean, invstd = (work, None, None) if norm is None else _batch_norm_forward(call, work)
        channel_gate, spatial_gate = call.cbam.channel_gate, call.cbam.spatial_gate
        # The gates' small graphs keep their tensors as they are: saved-tensor hooks (e.g.
        # non-reentrant checkpointing) would rerun the whole block for each nested backward.
        with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
            out, ca, sa, pixel_of_max, channel_of_max, graphs = _cbam_forward(
                x, channel_gate.mlp, channel_gate.pool_types, spatial_gate.spatial, True,
                x_is_temporary=x is not inp)
        # The input in its own dtype: a converted copy would double a low-precision input's bytes.
        ctx.save_for_backward(inp, ca, sa, pixel_of_max, channel_of_max, mean, invstd)
        ctx.graphs = graphs
        call.inp = None  # kept through autograd only (checkpointing may free it)
        ctx.call = call
        ctx.norm_training = norm is not None and norm.training
        return out.to(inp.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        # In the dtype forward computed in, also when backward is called under autocast.
        with torch.autocast(grad.device.type, enabled=False):
            return FusedCBAMFunction._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor):
        inp, ca, sa, pixel_of_max, channel_of_max, mean, invstd = ctx.saved_tensors
        channel_att, leaves, spatial_att, smax, smean = ctx.graphs
        call = ctx.call
        norm = call.norm
        input_dtype = inp.dtype
        inp, grad = call.computable(inp), call.computable(grad)
        # The tensors used in forward (functional_call may swap parameters only for forward).
        num_channel = call.layout.num_channel
        channel_params = call.gate_params[:num_channel]
        spatial_params = call.gate_params[num_channel:]
        x = inp
        if norm is not None:  # recompute the normalised map instead of having stored it
            # Around the mean, as BatchNorm computes it: no digits cancel at a large offset.
            scale = (invstd * call.norm_weight)[:, None, None].to(inp.dtype)
            x = torch.sub(inp, mean[:, None, None].to(inp.dtype))
            x = torch.addcmul(call.norm_bias[:, None, None].to(inp.dtype), x, scale, out=x)
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        # One full-size buffer, allocated like x (contiguous or channels_last) so that flat
        # views of it exist: first g * F, then the input gradient.
        buffer = torch.mul(grad, x, out=torch.empty_like(x, dtype=grad.dtype))
        grad_x = buffer.view(n, c, h * w)
        grad_sa = torch.bmm(ca[:, None, :].to(grad_x.dtype), grad_x).reshape(n, 1, h, w)
        grad_ca = torch.bmm(sa.reshape(n, 1, h * w).to(grad_x.dtype),
                            grad_x.transpose(1, 2))[:, 0].to(ca.dtype)

        (grad_smax, grad_smean), spatial_grads = _small_grads(
            spatial_att, grad_sa.to(spatial_att.dtype), [smax, smean], spatial_params)
        grad_smax = grad_smax.reshape(n, h * w)
        # The channel mean's gradient, the same for every channel of a pixel.
        grad_mean = grad_smean.reshape(n, 1, h * w) / c
        grad_ca += torch.bmm(grad_mean.to(flat.dtype), flat.transpose(1, 2))[:, 0].to(ca.dtype)
        at_max = flat.gather(1, channel_of_max[:, None, :])[:, 0]
        grad_ca.scatter_add_(1, channel_of_max, (grad_smax * at_max).to(ca.dtype))

        grad_descriptors, channel_grads = _small_grads(channel_att, grad_ca, leaves,
                                                       channel_params)
        # dL/dF = Mc * (g * Ms + dL/dmean) + pooling routes.
        grad_in = torch.addcmul(grad_mean.reshape(n, 1, h, w).to(grad.dtype), grad,
                                sa.to(grad.dtype), out=buffer)
        pool_types = call.cbam.channel_gate.pool_types
        ca4 = ca[:, :, None, None].to(grad_in.dtype)
        grad_in.mul_(ca4)  # per-channel factors: cheaper as two ops than as one addcmul
        if 'avg' in pool_types:
            grad_avg = grad_descriptors[pool_types.index('avg')] / (h * w)
            grad_in.add_(grad_avg[:, :, None, None].to(grad_in.dtype))
        grad_flat = grad_in.view(n, c, h * w)
        routed = grad_smax * ca.gather(1, channel_of_max)
        grad_flat.scatter_add_(1, channel_of_max[:, None, :], routed[:, None].to(grad_in.dtype))
        if 'max' in pool_types:
            grad_max = grad_descriptors[pool_types.index('max')].to(grad_in.dtype)
            grad_flat.scatter_add_(2, pixel_of_max[:, :, None], grad_max[:, :, None])

        norm_grads = []
        if norm is not None:  # the norm's input gradient goes into the recomputed map's buffer
            norm_weight = call.norm_weight
            needed = [norm_weight.requires_grad, call.norm_bias.requires_grad]
            norm_grads = [torch.empty_like(norm_weight), torch.empty_like(call.norm_bias)]
            grad_in = torch.ops.aten.native_batch_norm_backward.out(
                grad_in, inp, norm_weight, norm.running_mean, norm.running_var, mean, invstd,
                ctx.norm_training, norm.eps, [True, True, True], out0=x, out1=norm_grads[0],
                out2=norm_grads[1])[0]
            norm_grads = [g if need else None for g, need in zip(norm_grads, needed)]
        # One gradient per ``apply`` argument: the call's parameters in ``call.params()`` order.
        return (grad_in.to(input_dtype), None, *norm_grads, *channel_grads, *spatial_grads)


def torch_cbam(call: FusedCall) -> Tensor:
    """The call's ``cbam(norm(inp))`` (``cbam(inp)`` without a norm) through PyTorch ops."""
    if call.needs_grad:
        return FusedCBAMFunction.apply(call.inp, call, *call.params())
    work = call.computable(call.inp)
    x = work if call.norm is None else _batch_norm_forward(call, work)[0]
    gates = call.cbam
    out = _cbam_forward(x, gates.channel_gate.mlp, gates.channel_gate.pool_types,
                        gates.spatial_gate.spatial, False, x_is_temporary=x is not call.inp)
    return out.to(call.inp.dtype)
