"""The native CBAM kernels: sizes that span several blocks and tiles, thread counts, the configs
they cover, and the fallback when they cannot be built (their function and gradients against
the eager CBAM for every option: test_fused_cbam.py)."""
import copy

import pytest
import torch
import torch.nn as nn

from cbam_mmdet.models.layers import CBAM
from cbam_mmdet.models.layers import native_cbam
from cbam_mmdet.utils import cpp_library

pytestmark = pytest.mark.skipif(native_cbam.native_library() is None,
                                reason='the native kernels could not be built here')


def path_and_result(cbam, norm, x, grad):
    """The path taken ('native', 'torch' or 'eager'), output, input and parameter gradients."""
    x = x.detach().clone().requires_grad_()
    out = cbam(x) if norm is None else cbam.forward_after_norm(norm, x)
    out.backward(grad)
    path = {'NativeCBAMFunctionBackward': 'native',
            'FusedCBAMFunctionBackward': 'torch'}.get(type(out.grad_fn).__name__, 'eager')
    modules = [cbam] + ([norm] if norm is not None else [])
    grads = [p.grad.clone() for m in modules for p in m.parameters()]
    return path, [out.detach(), x.grad] + grads


def native_and_eager(channels, with_norm=True, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    cbam = CBAM(channels, ratio=4, **kwargs)
    for param in cbam.parameters():
        nn.init.normal_(param, std=0.5)
    norm = nn.BatchNorm2d(channels) if with_norm else None
    eager = CBAM(channels, ratio=4, fused=False, **kwargs)
    eager.load_state_dict(cbam.state_dict())
    return [None if m is None else m.to(dtype)
            for m in (cbam, norm, eager, copy.deepcopy(norm))]


@pytest.mark.parametrize('shape', [(1, 40, 37, 29), (3, 24, 23, 45), (2, 64, 1, 1)])
@pytest.mark.parametrize('threads', [1, 2])
def test_large_and_odd_sizes(shape, threads):
    """More than one 512-element block per plane, pixel tiles that do not divide H*W, a batch of
    three, a 1x1 map; one or two threads."""
    cbam, norm, eager, eager_norm = native_and_eager(shape[1])
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.3
    grad = torch.randn_like(x)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        path, native = path_and_result(cbam, norm, x, grad)
    finally:
        torch.set_num_threads(previous)
    _, reference = path_and_result(eager, eager_norm, x, grad)
    assert path == 'native'
    for got, want in zip(native, reference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(norm.running_var, eager_norm.running_var, rtol=1e-12, atol=0)


@pytest.mark.parametrize('options,path', [
    (dict(), 'native'),
    (dict(spatial_norm_cfg=None), 'native'),  # conv with bias, no norm
    (dict(kernel_size=3, pool_types=('max', 'avg')), 'native'),
    (dict(spatial_norm_cfg=dict(type='GN', num_groups=1)), 'torch'),
])
def test_configs_covered(options, path):
    cbam, norm, eager, eager_norm = native_and_eager(16, **options)
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    grad = torch.randn_like(x)
    taken, result = path_and_result(cbam, norm, x, grad)
    _, reference = path_and_result(eager, eager_norm, x, grad)
    assert taken == path
    for got, want in zip(result, reference):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_without_compiler_one_warning_then_torch_ops(tmp_path, monkeypatch):
    monkeypatch.setattr(native_cbam, '_library', None)  # not tried yet; restored afterwards
    monkeypatch.setenv('CBAM_MMDET_CACHE', str(tmp_path))
    monkeypatch.setattr(cpp_library, 'find_compiler', lambda: None)
    cbam, norm, eager, eager_norm = native_and_eager(16, dtype=torch.float32)
    x = torch.randn(2, 16, 5, 6)
    grad = torch.randn_like(x)
    with pytest.warns(RuntimeWarning, match='PyTorch-ops fused path') as warned:
        taken, result = path_and_result(cbam, norm, x, grad)
        path_and_result(cbam, norm, x, grad)
    assert len(warned) == 1 and taken == 'torch'
    assert 'no C++ compiler found' in str(warned[0].message)
    cbam, norm, eager, eager_norm = native_and_eager(16, dtype=torch.float32)
    _, reference = path_and_result(eager, eager_norm, x, grad)
    for got, want in zip(result, reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_overwrite_input_only_without_autograd():
    cbam, norm, eager, eager_norm = (m.eval() for m in native_and_eager(16))
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    expected = eager.forward_after_norm(eager_norm, x)
    with torch.no_grad():
        temporary = x.clone()
        out = cbam.forward_after_norm(norm, temporary, overwrite_input=True)
    assert out.data_ptr() == temporary.data_ptr()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    kept = x.clone().requires_grad_()
    out = cbam.forward_after_norm(norm, kept, overwrite_input=True)  # autograd needs the input
    assert out.data_ptr() != kept.data_ptr()
    torch.testing.assert_close(kept.detach(), x, rtol=0, atol=0)


@pytest.fixture
def shortcut_calls(monkeypatch):
    """Per call of the kernels' forward: whether it was given a shortcut to add."""
    calls = []
    original = native_cbam._forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get('shortcut') is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(native_cbam, '_forward', spy)
    return calls


def test_shortcut_and_relu_in_the_last_pass(shortcut_calls):
    cbam, norm, eager, eager_norm = (m.eval() for m in native_and_eager(16))
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    shortcut = torch.randn_like(x)
    shortcut[1, 3, 4, :2] = float('nan')  # passes the ReLU, as torch.relu
    expected = torch.relu(eager.forward_after_norm(eager_norm, x) + shortcut)
    with torch.no_grad():
        temporary = x.clone()
        out = cbam.forward_after_norm(norm, temporary, overwrite_input=True, shortcut=shortcut)
    assert shortcut_calls == [True] and out.data_ptr() == temporary.data_ptr()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert out.isnan().sum() == 2

    # Added afterwards by PyTorch: a shortcut in another layout, or one that needs a gradient.
    shortcut_calls.clear()
    with torch.no_grad():
        strided = shortcut.transpose(2, 3).contiguous().transpose(2, 3)
        out = cbam.forward_after_norm(norm, x, shortcut=strided)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12, equal_nan=True)
    for module in (cbam, norm):
        module.requires_grad_(False)
    wanting_grad = shortcut.nan_to_num().requires_grad_()
    out = cbam.forward_after_norm(norm, x, shortcut=wanting_grad)
    out.sum().backward()
    assert shortcut_calls == [False, False]
    torch.testing.assert_close(wanting_grad.grad, (out > 0).double())


def fused_and_eager_resnets(depth=18):
    from cbam_mmdet.models.backbones import CBAMResNet
    from cbam_mmdet.models.backbones.cbam_resnet import mmdet_scope_if_unset
    with mmdet_scope_if_unset():
        fused = CBAMResNet(depth=depth)
        eager = CBAMResNet(depth=depth, cbam_cfg=dict(type='CBAM', fused=False))
    for name, param in fused.named_parameters():  # trained-like, non-constant spatial gates
        if 'spatial' in name:
            nn.init.normal_(param, std=0.5)
    eager.load_state_dict(fused.state_dict())
    for model in (fused, eager):
        model.eval()  # mmdet's ResNet.train returns None
    return fused, eager


@pytest.mark.parametrize('depth,blocks', [(18, 8), (50, 16)])  # BasicBlock, Bottleneck
def test_backbone_inference_fuses_the_block_ends(shortcut_calls, depth, blocks):
    fused, eager = fused_and_eager_resnets(depth)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = eager(x)
        got = fused(x)
    assert shortcut_calls == [True] * blocks  # every block
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_backbone_inference_keeps_hooked_tensors(shortcut_calls):
    """Blocks let CBAM overwrite their last conv's output in inference unless a hook may hold it,
    and add the shortcut and apply the ReLU unless a hook must see the ReLU; every way the
    features are the eager backbone's."""
    fused, eager = fused_and_eager_resnets()
    block = fused.layer1[0]
    x = torch.randn(1, 3, 64, 64)
    conv_calls, relu_outputs = [], []

    def features_and_tails():
        shortcut_calls.clear()
        for got, want in zip(fused(x), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        return list(shortcut_calls)

    with torch.no_grad():
        expected = eager(x)
        block.conv2.register_forward_hook(
            lambda module, args, output: conv_calls.append((args[0], output)))
        assert features_and_tails() == [True] * 8
        conv_input, conv_output = conv_calls[0]
        torch.testing.assert_close(conv_output, block.conv2(conv_input), rtol=0, atol=0)

        relu_hook = block.relu.register_forward_hook(
            lambda module, args, output: relu_outputs.append(output))
        assert features_and_tails() == [False] + [True] * 7
        assert len(relu_outputs) == 2  # the block's two ReLUs ran as modules
        relu_hook.remove()

        with nn.modules.module.register_module_forward_hook(lambda *args: None):
            assert features_and_tails() == [False] * 8


def test_parameters_the_kernels_cannot_read_take_the_torch_ops_path():
    """The kernels read raw memory: a norm in another dtype or a non-contiguous parameter (e.g.
    substituted by ``functional_call``) must not reach them."""
    x = torch.randn(2, 16, 5, 6)
    grad = torch.randn_like(x)
    cbam, norm, eager, eager_norm = native_and_eager(16, dtype=torch.float32)
    with pytest.raises(RuntimeError):  # what the eager module does with a float64 norm
        eager.forward_after_norm(eager_norm.double(), x)
    with pytest.raises(RuntimeError):
        cbam.forward_after_norm(norm.double(), x)
    cbam, norm, eager, eager_norm = native_and_eager(16, dtype=torch.float32)
    weight = cbam.spatial_gate.spatial.conv.weight
    weight.data = weight.data.transpose(2, 3).contiguous().transpose(2, 3)  # same values
    assert not weight.is_contiguous()
    taken, result = path_and_result(cbam, norm, x, grad)
    _, reference = path_and_result(eager, eager_norm, x, grad)
    assert taken == 'torch'
    for got, want in zip(result, reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
