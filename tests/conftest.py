import copy
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.registry import init_default_scope

import cbam_mmdet  # noqa: F401 - registers the components
from cbam_mmdet.models.layers import CBAM, record_choices, use_impl
from cbam_mmdet.models.layers.cbam import cpp_impl
from cbam_mmdet.models.utils import mmdet_scope_if_unset

# Makes ``authors_reference`` importable and keeps the 2-core machines from oversubscribing.
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = osp.join(REPO_ROOT, 'tools')
DEMO_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'faster-rcnn_r18-cbam_fpn_200i_synthetic.py')


def load_tool(name: str):
    """The script tools/{name}.py imported as a module (the tools are scripts, not a package),
    e.g. 'train', 'analysis/complexity'."""
    spec = importlib.util.spec_from_file_location(
        f'{name.replace("/", "_")}_tool', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Exploit:
    """Pickles as a call of ``os.system``: loading it must not run the command, which would
    create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def bam_tensors(name: str, channels: int, reduction: int = 16) -> dict:
    """The tensors of one BAM module (Park et al., 2018) as the authors' code names them: a
    channel gate (an MLP with BN) and a spatial gate (1x1 reduce, dilated 3x3, 1x1 final)."""
    hidden = channels // reduction
    gates = {'channel_att.gate_c.gate_c_fc_0': (hidden, channels),
             'channel_att.gate_c.gate_c_fc_final': (channels, hidden),
             'spatial_att.gate_s.gate_s_conv_reduce0': (hidden, channels, 1, 1),
             'spatial_att.gate_s.gate_s_conv_di_0': (hidden, hidden, 3, 3),
             'spatial_att.gate_s.gate_s_conv_final': (1, hidden, 1, 1)}
    state = {}
    for module, shape in gates.items():
        state[f'{name}.{module}.weight'] = torch.zeros(shape)
        state[f'{name}.{module}.bias'] = torch.zeros(shape[0])
    return state


@pytest.fixture(autouse=True, scope='session')
def mmdet_scope():
    init_default_scope('mmdet')


@pytest.fixture
def repo_root():
    return REPO_ROOT


def run(args, timeout=600, env=None):
    """Run a tool from the repository root; fail the test with its output if it fails."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope='session')
def synthetic(tmp_path_factory):
    """A small synthetic dataset (COCO and VOC layouts) made by tools/make_synthetic_dataset.py."""
    out = tmp_path_factory.mktemp('data') / 'synthetic'
    run([sys.executable, osp.join(TOOLS, 'make_synthetic_dataset.py'), str(out),
         '--num-train', '8', '--num-val', '4'])
    return str(out)


def data_options(synthetic, max_iters=2, seed=None):
    """Point the demo config at ``synthetic``; no seed (as mmdet's configs) unless given."""
    root = osp.join(synthetic, 'coco') + '/'
    ann = root + 'annotations/instances_val.json'
    return ['--cfg-options', f'randomness.seed={seed}',
            f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}', f'val_evaluator.ann_file={ann}',
            f'test_evaluator.ann_file={ann}', 'train_dataloader.batch_size=2',
            f'train_cfg.max_iters={max_iters}', f'train_cfg.val_interval={max_iters}',
            'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1']


@pytest.fixture(scope='session')
def synthetic_imagenet(tmp_path_factory):
    """A small classification set in mmpretrain's ImageNet layout, 3 classes, 12 train and 6 val
    images of 64x64 (tools/make_synthetic_imagenet.py)."""
    out = tmp_path_factory.mktemp('data') / 'synthetic_in1k'
    run([sys.executable, osp.join(TOOLS, 'make_synthetic_imagenet.py'), str(out)])
    return str(out)


def make_cbam_pair(channels=16, with_norm=False, dtype=torch.float64, **kwargs):
    """A CBAM on its default implementation (with a BatchNorm before it with ``with_norm``, else
    None) and an eager copy with the same state: ``[cbam, norm, eager, eager_norm]``. Every
    parameter is non-trivial, so the spatial gate is not constant."""
    torch.manual_seed(0)
    fused = CBAM(channels, ratio=4, **kwargs)
    fused.init_weights()
    for param in fused.parameters():
        nn.init.normal_(param, std=0.5)
    norm = nn.BatchNorm2d(channels) if with_norm else None
    if norm is not None:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    eager = CBAM(channels, ratio=4, impl='eager', **kwargs)
    eager.load_state_dict(fused.state_dict())
    modules = [fused, norm, eager, copy.deepcopy(norm)]
    return [None if m is None else m.to(dtype) for m in modules]


@pytest.fixture
def cbam_pair():
    """``make_cbam_pair``."""
    return make_cbam_pair


def run_cbam(cbam, norm, x, grad):
    """The implementation a call of ``cbam`` (after ``norm``) ran ('eager', 'torch', 'cpp')
    and ``(output, input gradient, parameter gradients, buffers)`` of cbam(norm(x))."""
    x = x.detach().clone().requires_grad_()
    with record_choices() as choices:
        out = cbam(x) if norm is None else cbam.forward_after_norm(norm, x)
    out.backward(grad)
    modules = [cbam] + ([norm] if norm is not None else [])
    params = [p.grad.clone() if p.grad is not None else None
              for m in modules for p in m.parameters()]
    buffers = [b.clone() for m in modules for b in m.buffers()]
    return choices[-1].impl, (out.detach(), x.grad, params, buffers)


@pytest.fixture
def run_and_trace():
    """``run_cbam``."""
    return run_cbam


def assert_same(result, reference, rtol, atol):
    """Two ``run_cbam`` results agree: output, input gradient, each parameter gradient (None
    where the other is None) and buffer."""
    for got, want in zip(result[:2], reference[:2]):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    for got_list, want_list in zip(result[2:], reference[2:]):
        assert len(got_list) == len(want_list)
        for got, want in zip(got_list, want_list):
            assert (got is None) == (want is None)
            if got is not None:
                torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.fixture
def assert_same_results():
    """``assert_same``."""
    return assert_same


def cbam_path(cbam, x, norm=None):
    """The implementation ``cbam`` (after ``norm``) runs on ``x``, run on copies (statistics)."""
    cbam, norm = copy.deepcopy(cbam), copy.deepcopy(norm)
    x = x.detach().clone().requires_grad_()
    with record_choices() as choices:
        cbam(x) if norm is None else cbam.forward_after_norm(norm, x)
    return choices[-1].impl


@pytest.fixture
def path_of():
    """``cbam_path``."""
    return cbam_path


def make_backbone_pair(cls, train=True, **kwargs):
    """A CBAM backbone on its default implementation and an eager copy with the same state,
    float64 in training mode (``train``) or float32 in evaluation; trained-like, non-constant
    spatial gates."""
    with mmdet_scope_if_unset():
        fused = cls(norm_eval=False, **kwargs)
        eager = cls(norm_eval=False, cbam_cfg=dict(type='CBAM', impl='eager'), **kwargs)
    fused.init_weights()
    for name, param in fused.named_parameters():
        if 'spatial' in name:
            nn.init.normal_(param, std=0.5)
    eager.load_state_dict(fused.state_dict())
    for model in (fused, eager):
        if train:
            model.double().train()  # mmdet's ResNet.train returns None
        else:
            model.eval()
    return fused, eager


@pytest.fixture
def backbone_pair():
    """``make_backbone_pair``."""
    return make_backbone_pair


@pytest.fixture(params=['cpp', 'torch'])
def fused_impl(request):
    """Each fused implementation in turn: 'cpp' (the default choice, 'auto', which runs the C++
    kernels where they apply; skipped where they cannot be built) and 'torch' (chosen
    process-wide for the test)."""
    if request.param == 'cpp' and cpp_impl.library() is None:
        pytest.skip('the C++ kernels could not be built here (see the warning)')
    with use_impl('auto' if request.param == 'cpp' else 'torch'):
        yield request.param
