"""The C++ CBAM kernels: sizes that span several blocks and tiles, thread counts, the configs
they cover, their structs, and the fallback when they cannot be built (their function and
gradients against the eager CBAM for every option: test_fused_impls.py)."""
import ctypes

import pytest
import torch
import torch.nn as nn

from cbam_mmdet.models.backbones import CBAMResNet
from cbam_mmdet.models.layers import record_choices
from cbam_mmdet.models.layers.cbam import cpp_impl
from cbam_mmdet.runtime import cpp_library

pytestmark = pytest.mark.skipif(cpp_impl.library() is None,
                                reason='the C++ kernels could not be built here')


@pytest.mark.parametrize('shape', [(1, 40, 37, 29), (3, 24, 23, 45), (2, 64, 1, 1)])
@pytest.mark.parametrize('threads', [1, 2])
def test_large_and_odd_sizes(shape, threads, cbam_pair, run_and_trace, assert_same_results):
    """More than one 512-element block per plane, pixel tiles that do not divide H*W, a batch of
    three, a 1x1 map; one or two threads."""
    cbam, norm, eager, eager_norm = cbam_pair(shape[1], with_norm=True)
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.3
    grad = torch.randn_like(x)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        path, native = run_and_trace(cbam, norm, x, grad)
    finally:
        torch.set_num_threads(previous)
    _, reference = run_and_trace(eager, eager_norm, x, grad)
    assert path == 'cpp'
    assert_same_results(native, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(norm.running_var, eager_norm.running_var, rtol=1e-12, atol=0)


@pytest.mark.parametrize('options,path', [
    (dict(), 'cpp'),
    (dict(spatial_norm_cfg=None), 'cpp'),  # conv with bias, no norm
    (dict(kernel_size=3, pool_types=('max', 'avg')), 'cpp'),
    (dict(spatial_norm_cfg=dict(type='GN', num_groups=1)), 'torch'),
])
def test_configs_covered(options, path, cbam_pair, run_and_trace, assert_same_results):
    cbam, norm, eager, eager_norm = cbam_pair(16, with_norm=True, **options)
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    grad = torch.randn_like(x)
    taken, result = run_and_trace(cbam, norm, x, grad)
    _, reference = run_and_trace(eager, eager_norm, x, grad)
    assert taken == path
    assert_same_results(result, reference, rtol=1e-10, atol=1e-12)


def test_without_compiler_one_warning_then_torch_ops(tmp_path, monkeypatch, cbam_pair,
                                                     run_and_trace, assert_same_results):
    monkeypatch.setattr(cpp_impl, '_library', None)  # not tried yet; restored afterwards
    monkeypatch.setenv('CBAM_MMDET_CACHE', str(tmp_path))
    monkeypatch.setattr(cpp_library, 'find_compiler', lambda: None)
    x = torch.randn(2, 16, 5, 6)
    grad = torch.randn_like(x)
    # The kernels are loaded when the first CBAM that may use them is built (before any
    # torch.compile could trace the build): the warning comes then, and once.
    with pytest.warns(RuntimeWarning, match='PyTorch-ops fused path') as warned:
        cbam, norm, eager, eager_norm = cbam_pair(16, with_norm=True, dtype=torch.float32)
        taken, result = run_and_trace(cbam, norm, x, grad)
        run_and_trace(cbam, norm, x, grad)
    assert len(warned) == 1 and taken == 'torch'
    assert 'no C++ compiler found' in str(warned[0].message)
    cbam, norm, eager, eager_norm = cbam_pair(16, with_norm=True, dtype=torch.float32)
    _, reference = run_and_trace(eager, eager_norm, x, grad)
    assert_same_results(result, reference, rtol=1e-4, atol=1e-5)


def test_overwrite_input_only_without_autograd(cbam_pair):
    cbam, norm, eager, eager_norm = (m.eval() for m in cbam_pair(16, with_norm=True))
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
def choices():
    """Every CBAM call's ``Choice`` during the test."""
    with record_choices() as recorded:
        yield recorded


def added_shortcuts(choices):
    """Per call of the C++ kernels: whether they added the shortcut in their last pass."""
    return [choice.with_shortcut for choice in choices if choice.impl == 'cpp']


def test_shortcut_and_relu_in_the_last_pass(choices, cbam_pair):
    cbam, norm, eager, eager_norm = (m.eval() for m in cbam_pair(16, with_norm=True))
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    shortcut = torch.randn_like(x)
    shortcut[1, 3, 4, :2] = float('nan')  # passes the ReLU, as torch.relu
    expected = torch.relu(eager.forward_after_norm(eager_norm, x) + shortcut)
    with torch.no_grad():
        temporary = x.clone()
        out = cbam.forward_after_norm(norm, temporary, overwrite_input=True, shortcut=shortcut)
    assert added_shortcuts(choices) == [True] and out.data_ptr() == temporary.data_ptr()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert out.isnan().sum() == 2

    # Added afterwards by PyTorch: a shortcut in another layout, or one that needs a gradient.
    choices.clear()
    with torch.no_grad():
        strided = shortcut.transpose(2, 3).contiguous().transpose(2, 3)
        out = cbam.forward_after_norm(norm, x, shortcut=strided)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12, equal_nan=True)
    for module in (cbam, norm):
        module.requires_grad_(False)
    wanting_grad = shortcut.nan_to_num().requires_grad_()
    out = cbam.forward_after_norm(norm, x, shortcut=wanting_grad)
    out.sum().backward()
    assert added_shortcuts(choices) == [False, False]
    torch.testing.assert_close(wanting_grad.grad, (out > 0).double())


@pytest.mark.parametrize('depth,blocks', [(18, 8), (50, 16)])  # BasicBlock, Bottleneck
def test_backbone_inference_fuses_the_block_ends(choices, depth, blocks, backbone_pair):
    fused, eager = backbone_pair(CBAMResNet, train=False, depth=depth)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = eager(x)
        choices.clear()
        got = fused(x)
    assert added_shortcuts(choices) == [True] * blocks  # every block
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_backbone_inference_keeps_hooked_tensors(choices, backbone_pair):
    """Blocks let CBAM overwrite their last conv's output in inference unless a hook may hold it,
    and add the shortcut and apply the ReLU unless a hook must see the ReLU; every way the
    features are the eager backbone's."""
    fused, eager = backbone_pair(CBAMResNet, train=False, depth=18)
    block = fused.layer1[0]
    x = torch.randn(1, 3, 64, 64)
    conv_calls, relu_outputs = [], []

    def features_and_tails():
        choices.clear()
        for got, want in zip(fused(x), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        return added_shortcuts(choices)

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


def test_parameters_the_kernels_cannot_read_take_the_torch_ops_path(cbam_pair, run_and_trace,
                                                                    assert_same_results):
    """The kernels read raw memory: a norm in another dtype or a non-contiguous parameter (e.g.
    substituted by ``functional_call``) must not reach them."""
    x = torch.randn(2, 16, 5, 6)
    grad = torch.randn_like(x)
    cbam, norm, eager, eager_norm = cbam_pair(16, with_norm=True, dtype=torch.float32)
    with pytest.raises(RuntimeError):  # what the eager module does with a float64 norm
        eager.forward_after_norm(eager_norm.double(), x)
    with pytest.raises(RuntimeError):
        cbam.forward_after_norm(norm.double(), x)
    cbam, norm, eager, eager_norm = cbam_pair(16, with_norm=True, dtype=torch.float32)
    weight = cbam.spatial_gate.spatial.conv.weight
    weight.data = weight.data.transpose(2, 3).contiguous().transpose(2, 3)  # same values
    assert not weight.is_contiguous()
    taken, result = run_and_trace(cbam, norm, x, grad)
    _, reference = run_and_trace(eager, eager_norm, x, grad)
    assert taken == 'torch'
    assert_same_results(result, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('which', range(len(cpp_impl.STRUCTS)))
def test_ctypes_structs_match_the_compiled_layout(which):
    """Each ctypes mirror has the size and field offsets the compiler gave the C++ struct."""
    struct = cpp_impl.STRUCTS[which]
    expected = [ctypes.sizeof(struct)] + [getattr(struct, name).offset
                                          for name, _ in struct._fields_]
    assert cpp_impl.struct_layout(which) == expected
