"""The fused CBAM implementations compute the eager CBAM's function, gradients and BN
statistics.

Every test taking ``fused_impl`` runs twice: with the C++ kernels (``cpp``, the CPU default) and
with the PyTorch-ops function (``torch``: GPUs, channels_last, half precision, machines without
a compiler).
"""
import copy

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from cbam_mmdet.models.backbones import CBAMResNet, CBAMResNeXt
from cbam_mmdet.models.layers import CBAM
from cbam_mmdet.models.layers.cbam import dispatch
from cbam_mmdet.models.layers.cbam.dispatch import record_choices
from cbam_mmdet.models.utils import mmdet_scope_if_unset
from cbam_mmdet.runtime.memory import saved_tensor_bytes
from mmdet.models.backbones import ResNet


@pytest.fixture(autouse=True)
def each_fused_impl(fused_impl):
    """Every test of this module runs with each fused implementation."""
    return fused_impl


OPTIONS = [
    dict(),
    dict(pool_types=('avg', )),
    dict(pool_types=('max', )),
    dict(kernel_size=3),
    dict(spatial_norm_cfg=None),
]


@pytest.mark.parametrize('options', OPTIONS)
@pytest.mark.parametrize('with_norm', [False, True])
@pytest.mark.parametrize('training', [True, False])
def test_fused_equals_eager_float64(options, with_norm, training, fused_impl, cbam_pair,
                                    run_and_trace, path_of, assert_same_results):
    fused, fused_norm, eager, eager_norm = cbam_pair(with_norm=with_norm, **options)
    for m in (fused, fused_norm, eager, eager_norm):
        if m is not None:
            m.train(training)
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64) * 2 + 0.5
    grad = torch.randn_like(x)
    assert path_of(fused, x, fused_norm) == fused_impl
    fused_result = run_and_trace(fused, fused_norm, x, grad)[1]
    eager_result = run_and_trace(eager, eager_norm, x, grad)[1]
    assert_same_results(fused_result, eager_result, rtol=1e-10, atol=1e-12)
    if with_norm and training:  # statistics updated once, as by the eager norm
        assert fused_norm.num_batches_tracked.item() == 1


def test_fused_float32_within_rounding(cbam_pair, run_and_trace):
    """Both float32 paths are as close to a float64 run as float32 rounding allows."""
    fused, norm, eager, eager_norm = cbam_pair(with_norm=True, dtype=torch.float32)
    ref, ref_norm = copy.deepcopy(eager).double(), copy.deepcopy(eager_norm).double()
    x = torch.randn(2, 16, 12, 10) * 3
    grad = torch.randn_like(x)
    exact = run_and_trace(ref, ref_norm, x.double(), grad.double())[1]
    errors = {}
    for name, result in [('fused', run_and_trace(fused, norm, x, grad)[1]),
                         ('eager', run_and_trace(eager, eager_norm, x, grad)[1])]:
        errors[name] = [((got.double() - want).abs().max() / want.abs().max()).item()
                        for got, want in zip(result[:2] + tuple(result[2]),
                                             exact[:2] + tuple(exact[2]))]
    for fused_error, eager_error in zip(errors['fused'], errors['eager']):
        assert fused_error < max(2e-6, 4 * eager_error)


class NormThenCBAM(nn.Module):

    def __init__(self, norm, cbam):
        super().__init__()
        self.norm, self.cbam = norm, cbam

    def forward(self, x):
        return self.cbam.forward_after_norm(self.norm, x)


@pytest.mark.parametrize('with_norm,training', [(False, True), (True, True), (True, False)])
def test_gradcheck_input_and_parameters(with_norm, training, fused_impl, cbam_pair, path_of):
    cbam, norm, _, _ = cbam_pair(channels=8, with_norm=with_norm)
    model = (cbam if norm is None else NormThenCBAM(norm, cbam)).train(training)
    names = [name for name, _ in model.named_parameters()]
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    assert path_of(cbam, x, norm) == fused_impl
    assert torch.autograd.gradcheck(
        lambda x, *params: functional_call(model, dict(zip(names, params)), (x, )),
        (x, *params), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize('with_norm', [False, True])
def test_ties_route_to_first_maximum(with_norm, cbam_pair, run_and_trace, assert_same_results):
    """Post-ReLU zeros and constant maps tie in both max poolings."""
    fused, fused_norm, eager, eager_norm = cbam_pair(with_norm=with_norm)
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64).relu()
    x[:, 3] = 0  # a dead channel: every pixel ties in the spatial max pooling
    x[0, :, 2:4] = 0  # pixels where every channel is 0: ties in the channel max pooling
    x[1, 5] = 1.5  # a constant channel
    grad = torch.randn_like(x)
    if with_norm:  # the norm's input: a constant channel stays constant after it
        x[1] = 2.0
    assert_same_results(run_and_trace(fused, fused_norm, x, grad)[1],
                        run_and_trace(eager, eager_norm, x, grad)[1], 1e-10, 1e-12)


def test_channels_last(cbam_pair, run_and_trace, path_of, assert_same_results):
    fused, _, eager, _ = cbam_pair()
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    assert path_of(fused, x) == 'torch'  # the C++ kernels read NCHW
    fused_result = run_and_trace(fused, None, x, grad)[1]
    assert_same_results(fused_result, run_and_trace(eager, None, x, grad)[1], 1e-10, 1e-12)
    assert fused_result[0].is_contiguous(memory_format=torch.channels_last)


def relative_errors(result, exact):
    """Max relative error of each of a ``run_cbam`` result's tensors against ``exact``."""
    pairs = list(zip(result[:2] + tuple(result[2]) + tuple(result[3]),
                     exact[:2] + tuple(exact[2]) + tuple(exact[3])))
    return [((got.double() - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()
            for got, want in pairs if want.is_floating_point()]


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('with_norm', [False, True])
def test_autocast_takes_the_fused_path_in_float32(dtype, with_norm, fused_impl, cbam_pair,
                                                  run_and_trace, path_of):
    """Under autocast the fused path runs, computing in float32 as BatchNorm does there: it
    returns the dtypes the eager ops return under autocast, and its output, gradients and
    running statistics are at most as far from a float64 run as the eager ops'."""
    fused, norm, eager, eager_norm = cbam_pair(with_norm=with_norm, dtype=torch.float32)
    reference = [None if m is None else copy.deepcopy(m).double() for m in (eager, eager_norm)]
    x = (torch.randn(2, 16, 12, 10) * 3 + 1).to(dtype)  # a conv's output under autocast
    grad = torch.randn_like(x)
    exact = run_and_trace(*reference, x.double(), grad.double())[1]
    with torch.autocast('cpu', dtype=dtype):
        assert path_of(fused, x, norm) == fused_impl
        fused_result = run_and_trace(fused, norm, x, grad)[1]
        eager_result = run_and_trace(eager, eager_norm, x, grad)[1]
    assert [t.dtype for t in fused_result[:2]] == [t.dtype for t in eager_result[:2]] == [dtype] * 2
    for fused_error, eager_error in zip(relative_errors(fused_result, exact),
                                        relative_errors(eager_result, exact)):
        assert fused_error <= max(1e-5, 1.5 * eager_error)


def test_autocast_keeps_the_input_in_its_own_dtype_for_backward(cbam_pair):
    """What the fused call saves under bfloat16 autocast is the bfloat16 input plus small
    tensors: no float32 copy of the map."""
    fused, norm, _, _ = cbam_pair(channels=256, with_norm=True, dtype=torch.float32)
    x = torch.randn(2, 256, 32, 32, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        saved = saved_tensor_bytes(lambda: fused.forward_after_norm(norm, x),
                                   [*fused.parameters(), *norm.parameters()])
    assert x.numel() * 2 <= saved < x.numel() * 2 * 1.1  # a float32 copy would make it 3x


def test_half_precision_modules(cbam_pair, run_and_trace, path_of, assert_same_results):
    """Half-precision modules and inputs without autocast: the fused path in the inputs' dtype,
    close to the eager one."""
    for dtype in (torch.bfloat16, torch.float16):
        fused, norm, eager, eager_norm = cbam_pair(with_norm=True, dtype=dtype)
        x = torch.randn(2, 16, 6, 7, dtype=dtype)
        grad = torch.randn_like(x)
        assert path_of(fused, x, norm) == 'torch'  # the C++ kernels: fp32/fp64
        fused_out = run_and_trace(fused, norm, x, grad)[1]
        eager_out = run_and_trace(eager, eager_norm, x, grad)[1]
        assert fused_out[0].dtype == dtype
        assert_same_results(fused_out, eager_out, rtol=0.05, atol=0.05)


def test_path_choice_on_torch_before_2_4(monkeypatch, fused_impl, cbam_pair, path_of):
    """torch < 2.3 has no torch.compiler.is_compiling and torch < 2.4 no device argument to
    is_autocast_enabled (CPU autocast has its own flag): the fused path is chosen all the same,
    and CPU autocast is still seen."""
    with monkeypatch.context() as patch:  # torch.autocast itself needs the current signature
        patch.setattr(torch, 'is_autocast_enabled', lambda: False)
        assert not dispatch._autocast_takes_device()
    assert dispatch._autocast_takes_device()
    monkeypatch.setattr(dispatch, 'AUTOCAST_TAKES_DEVICE', False)  # CPU flag read instead
    monkeypatch.delattr(torch.compiler, 'is_compiling')
    assert not dispatch.is_compiling()
    fused, norm, _, _ = cbam_pair(with_norm=True, dtype=torch.float32)
    x = torch.randn(2, 16, 6, 7)
    assert path_of(fused, x, norm) == fused_impl
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert dispatch.autocast_enabled('cpu')
        with record_choices() as choices:
            assert fused.forward_after_norm(norm, x.bfloat16()).dtype == torch.bfloat16
        assert [choice.impl for choice in choices] == [fused_impl]


def test_training_batch_of_one_value_is_refused_as_by_batch_norm(cbam_pair):
    fused, norm, eager, eager_norm = cbam_pair(with_norm=True)
    x = torch.randn(1, 16, 1, 1, dtype=torch.float64)
    for cbam, bn in ((eager, eager_norm), (fused, norm)):
        with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
            cbam.forward_after_norm(bn, x.clone().requires_grad_())
    assert norm.num_batches_tracked.item() == 0  # refused before any statistics update
    for module in (fused, norm, eager, eager_norm):
        module.eval()
    torch.testing.assert_close(fused.forward_after_norm(norm, x),
                               eager.forward_after_norm(eager_norm, x))


def test_frozen_parameters_and_constant_input(cbam_pair, run_and_trace, assert_same_results):
    fused, norm, eager, eager_norm = cbam_pair(with_norm=True)
    for module in (fused, norm, eager, eager_norm):
        module.requires_grad_(False)
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    grad = torch.randn_like(x)
    fused_result = run_and_trace(fused, norm, x, grad)[1]
    assert all(g is None for g in fused_result[2])
    assert_same_results(fused_result, run_and_trace(eager, eager_norm, x, grad)[1], 1e-10, 1e-12)
    # Trainable parameters, input without gradient (e.g. the first layer's input).
    fused, _, eager, _ = cbam_pair()
    fused_out, eager_out = fused(x), eager(x)
    (fused_out * grad).sum().backward()
    (eager_out * grad).sum().backward()
    for a, b in zip(fused.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_eager_fallbacks(path_of):
    x = torch.randn(2, 16, 6, 7)
    for options in [dict(arrangement='spatial_first'), dict(arrangement='parallel'),
                    dict(arrangement='channel'), dict(spatial_descriptor='conv')]:
        assert not CBAM(16, ratio=4, **options).fused
    assert path_of(CBAM(16, fused=False), x) == 'eager'
    assert path_of(CBAM(16), x.transpose(2, 3)) == 'eager'  # neither NCHW nor NHWC memory
    cbam = CBAM(16, ratio=4)
    traced = torch.jit.trace(cbam, x)  # FLOP counters trace: they must see the eager ops
    assert 'PythonOp' not in str(traced.graph)
    torch.testing.assert_close(traced(x), cbam(x))
    # A forward pre-hook (the attention visualiser) sees the normalised map.
    norm, seen = nn.BatchNorm2d(16).eval(), []
    cbam.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    cbam.forward_after_norm(norm, x.requires_grad_())
    torch.testing.assert_close(seen[0], norm(x))


@pytest.mark.parametrize('cls,kwargs', [
    (CBAMResNet, dict(depth=18)),
    (CBAMResNet, dict(depth=18, with_cp=True)),  # non-reentrant checkpointing
    (CBAMResNet, dict(depth=50)),
    (CBAMResNet, dict(depth=50, with_cp=True)),
    (CBAMResNeXt, dict(depth=50, groups=4, base_width=4)),
])
def test_backbone_fused_equals_eager(cls, kwargs, backbone_pair):
    fused, eager = backbone_pair(cls, **kwargs)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    results = []
    for model in (fused, eager):
        inp = x.clone().requires_grad_()
        outs = model(inp)
        torch.manual_seed(1)
        torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
        results.append(
            (outs, inp.grad, dict(model.named_parameters()), dict(model.named_buffers())))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-11)
    for name, param in results[0][2].items():
        torch.testing.assert_close(param.grad, results[1][2][name].grad, rtol=1e-8, atol=1e-10,
                                   msg=name)
    for name, buffer in results[0][3].items():
        torch.testing.assert_close(buffer, results[1][3][name], rtol=1e-9, atol=1e-11, msg=name)


def test_r50_saved_activations(backbone_pair):
    """Fused CBAM-R50 keeps about what plain R50 keeps for backward; eager CBAM much more."""
    fused, eager = backbone_pair(CBAMResNet, depth=50)
    with mmdet_scope_if_unset():
        plain = ResNet(depth=50, norm_eval=False).double()
    plain.train()
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    fused_bytes, eager_bytes, plain_bytes = (saved_tensor_bytes(lambda: m(x), m.parameters())
                                             for m in (fused, eager, plain))
    assert fused_bytes < 1.05 * plain_bytes
    assert eager_bytes > 1.25 * plain_bytes


def test_bottleneck_keeps_zero_init_residual():
    """CBAMBottleneck is not mmdet's Bottleneck class, whose zero init mmdet keys on identity."""
    with mmdet_scope_if_unset():
        model = CBAMResNet(depth=50, zero_init_residual=True)
    model.init_weights()
    assert all(block.norm3.weight.abs().max() == 0 for block in model.blocks())
    assert all(block.norm2.weight.abs().min() == 1 for block in model.blocks())
