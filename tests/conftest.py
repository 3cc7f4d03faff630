import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.registry import init_default_scope

import cbam_mmdet  # noqa: F401 - registers the components

# Makes ``authors_reference`` importable and keeps the 2-core machines from oversubscribing.
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = osp.join(REPO_ROOT, 'tools')
DEMO_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'faster-rcnn_r18-cbam_fpn_300i_synthetic.py')


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
