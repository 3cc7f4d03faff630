"""float32 accuracy of the fused implementations at any mean offset of the BatchNorm's input:
against a float64 eager run, every result (output, running statistics, every gradient) is
within a small multiple of the float32 eager module's error (its largest over the results: at a
large offset the float32 input itself is rounded, which bounds what any float32 run can reach).
"""
import copy

import pytest
import torch

from cbam_mmdet.models.backbones import CBAMResNet
from cbam_mmdet.models.layers import record_choices

OFFSETS = [0.0, 10.0, 100.0, 1e3, 1e4]
# Relative errors below this are float32 rounding (sums of thousands of terms) whatever the eager
# error is.
FLOOR = 5e-6


def relative_error(got, want):
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def assert_within_eager_error(fused, eager, exact, names, multiple=4):
    eager_error = max(relative_error(value, want) for value, want in zip(eager, exact))
    for name, got, want in zip(names, fused, exact):
        fused_error = relative_error(got, want)
        assert fused_error <= max(FLOOR, multiple * eager_error), (name, fused_error, eager_error)


def module_results(cbam, norm, x, grad):
    x = x.detach().clone().requires_grad_()
    with record_choices() as choices:
        out = cbam.forward_after_norm(norm, x)
    out.backward(grad)
    grads = [p.grad for m in (norm, cbam) for p in m.parameters()]
    stats = [norm.running_mean, norm.running_var, cbam.spatial_gate.spatial.norm.running_mean,
             cbam.spatial_gate.spatial.norm.running_var]
    return choices[0].impl, [out, x.grad, *grads, *stats]


@pytest.mark.parametrize('offset', OFFSETS)
def test_module_at_mean_offsets(offset, fused_impl, cbam_pair):
    cbam, norm, eager, eager_norm = cbam_pair(32, with_norm=True, dtype=torch.float32)
    ref, ref_norm = copy.deepcopy(eager).double(), copy.deepcopy(eager_norm).double()
    torch.manual_seed(1)
    x = torch.randn(2, 32, 20, 24, dtype=torch.float64) * 2 + offset
    grad = torch.randn_like(x)
    impl, fused = module_results(cbam, norm, x.float(), grad.float())
    _, eager_values = module_results(eager, eager_norm, x.float(), grad.float())
    _, exact = module_results(ref, ref_norm, x, grad)
    assert impl == fused_impl
    names = ['output', 'input grad'] + [f'param grad {i}' for i in range(len(fused) - 6)] + [
        'running_mean', 'running_var', 'spatial running_mean', 'spatial running_var']
    assert_within_eager_error(fused, eager_values, exact, names)


def offset_conv_outputs(model, offset):
    """Shift the last conv's output of every block by ``offset``: the input of the norm that the
    fused call computes."""
    for block in model.blocks():
        block.conv2.register_forward_hook(lambda module, args, out: out + offset)


def backbone_results(model, x, grads):
    x = x.clone().requires_grad_()
    outs = model(x)
    torch.autograd.backward(outs, grads)
    named = dict(model.named_parameters())
    return ([*outs, x.grad] + [named[name].grad for name in sorted(named)] +
            [buffer for name, buffer in sorted(model.named_buffers())
             if 'running' in name]), sorted(named)


@pytest.mark.parametrize('offset', [0.0, 100.0, 1e4])
def test_backbone_at_mean_offsets(offset, fused_impl, backbone_pair):
    fused, eager = backbone_pair(CBAMResNet, depth=18)
    for model in (fused, eager):
        model.float()
        offset_conv_outputs(model, offset)
    ref = copy.deepcopy(eager).double()
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grads = [torch.randn(2, c, 32 // 2**(i + 2), 32 // 2**(i + 2), dtype=torch.float64)
             for i, c in enumerate((64, 128, 256, 512))]
    with record_choices() as choices:
        fused_values, names = backbone_results(fused, x.float(), [g.float() for g in grads])
    assert {choice.impl for choice in choices} == {fused_impl}
    eager_values, _ = backbone_results(eager, x.float(), [g.float() for g in grads])
    exact, _ = backbone_results(ref, x, grads)
    labels = [f'output {i}' for i in range(4)] + ['input grad'] + names + [
        f'buffer {i}' for i in range(len(exact))]
    # Errors compound over 8 blocks, and at 1e4 some gradients near 0 are noise for both runs.
    assert_within_eager_error(fused_values, eager_values, exact, labels, multiple=8)
