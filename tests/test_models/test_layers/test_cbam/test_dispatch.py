"""The implementation choice: one vocabulary, explicit choices honoured or explained, the
process-wide setting, and the gates' layout followed when a module is replaced."""
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn

from cbam_mmdet.models.layers import CBAM, get_impl, record_choices, set_impl, use_impl
from cbam_mmdet.models.layers.cbam import cpp_impl, dispatch

needs_cpp = pytest.mark.skipif(cpp_impl.library() is None,
                               reason='the C++ kernels could not be built here')


def impls_run(cbam, x, norm=None):
    with record_choices() as choices:
        cbam(x) if norm is None else cbam.forward_after_norm(norm, x)
    return [choice.impl for choice in choices]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-reason warnings anew."""
    monkeypatch.setattr(dispatch, '_warned', set())


@pytest.mark.parametrize('kwargs,match', [
    (dict(impl='native'), "impl='native'"),
    (dict(impl='cpp', fused=False), 'contradicts'),
    (dict(impl='cpp', spatial_descriptor='conv'), "'pool' spatial descriptor only"),
    (dict(impl='torch', arrangement='parallel'), "'channel_first' arrangement"),
])
def test_choices_that_cannot_be_honoured_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CBAM(16, ratio=4, **kwargs)


def test_fused_false_is_eager_and_configs_keep_it():
    assert CBAM(16, fused=False).impl == 'eager'
    assert CBAM(16, impl='eager', fused=False).impl == 'eager'
    assert not CBAM(16, fused=False).fused and CBAM(16).fused
    assert impls_run(CBAM(16, fused=False), torch.randn(2, 16, 4, 4)) == ['eager']


@needs_cpp
def test_process_wide_choice_applies_to_auto_modules_only():
    auto, torch_module = CBAM(16, ratio=4), CBAM(16, ratio=4, impl='torch')
    x = torch.randn(2, 16, 5, 6)
    assert impls_run(auto, x) == ['cpp'] and impls_run(torch_module, x) == ['torch']
    with use_impl('eager'):
        assert get_impl() == 'eager'
        assert impls_run(auto, x) == ['eager'] and impls_run(torch_module, x) == ['torch']
    assert get_impl() == 'auto'
    previous = set_impl('torch')
    try:
        assert impls_run(auto, x) == ['torch']
    finally:
        set_impl(previous)
    with pytest.raises(ValueError, match='valid values'):
        set_impl('fused')


@pytest.mark.parametrize('environment,impl', [
    (dict(CBAM_MMDET_NATIVE='0'), 'torch'),
    (dict(CBAM_MMDET_IMPL='eager'), 'eager'),
    (dict(), 'auto'),
])
def test_environment_is_read_once_at_import(environment, impl):
    code = ('import os; from cbam_mmdet.models.layers import get_impl; '
            'os.environ["CBAM_MMDET_IMPL"] = "cpp"; print(get_impl())')
    env = {k: v for k, v in os.environ.items()
           if k not in ('CBAM_MMDET_NATIVE', 'CBAM_MMDET_IMPL')}
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env={**env, **environment}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == impl


@needs_cpp
def test_explicit_cpp_that_cannot_run_warns_once_with_the_reason():
    cbam = CBAM(16, ratio=4, impl='cpp')
    x = torch.randn(2, 16, 5, 6).contiguous(memory_format=torch.channels_last)
    with pytest.warns(RuntimeWarning, match="impl='cpp' runs 'torch'.*NCHW") as warned:
        assert impls_run(cbam, x) == ['torch']
        assert impls_run(cbam, x) == ['torch']
    assert len(warned) == 1
    with torch.autocast('cpu', dtype=torch.bfloat16):  # computed in float32 by the kernels
        assert impls_run(cbam, x.contiguous().bfloat16()) == ['cpp']
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # 'auto' falls back without a word
        assert impls_run(CBAM(16, ratio=4), x) == ['torch']


@needs_cpp
def test_a_replaced_gate_module_is_followed():
    """The gates' layout is gathered when the module is built (not in the first, maybe compiled,
    call), and again when a module is replaced."""
    cbam, norm = CBAM(16, ratio=4), nn.BatchNorm2d(16)
    layout = cbam.__dict__['_gate_layout']
    x = torch.randn(2, 16, 5, 6)
    assert impls_run(cbam, x, norm) == ['cpp']
    assert dispatch.gate_layout(cbam) is layout
    spatial = cbam.spatial_gate.spatial
    setattr(spatial, spatial.norm_name, nn.GroupNorm(1, 1))  # the C++ form is gone
    assert impls_run(cbam, x, norm) == ['torch']
    assert dispatch.gate_layout(cbam) is not layout
    assert 'GroupNorm' in dispatch.gate_layout(cbam).cpp_problem
    assert '_gate_layout' not in cbam.state_dict()


def test_a_norm_the_fused_call_cannot_compute_runs_as_a_module():
    cbam = CBAM(16, ratio=4)
    x = torch.randn(2, 16, 5, 6)
    with record_choices() as choices:
        cbam.forward_after_norm(nn.SyncBatchNorm(16), x)
    assert [choice.with_norm for choice in choices] == [False]
    with record_choices() as choices:
        cbam.forward_after_norm(nn.BatchNorm2d(16), x)
    assert [choice.with_norm for choice in choices] == [True]
