"""mmengine Runner checkpoints load under torch >= 2.6 with weights_only kept on."""
import os
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint
from torch.utils.data import Dataset

from cbam_mmdet.runtime.weights_only import (NUMERIC_DTYPE_CLASSES, history_buffer_method,
                                             mmengine_checkpoint_globals)
from conftest import Exploit


class ToyDataset(Dataset):
    metainfo = dict(classes=('a', 'b'), palette=[(1, 2, 3), (4, 5, 6)])

    def __len__(self):
        return 8

    def __getitem__(self, idx):
        gen = torch.Generator().manual_seed(idx)
        return dict(inputs=torch.randn(4, generator=gen), target=torch.randn(1, generator=gen))


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.bn = nn.BatchNorm1d(1)

    def forward(self, inputs, target, mode='tensor'):
        out = self.bn(self.linear(inputs))
        if mode == 'loss':
            return dict(loss=((out - target)**2).mean())
        return out


def make_runner(work_dir, max_iters, resume=False, load_from=None):
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyDataset(), sampler=dict(type='DefaultSampler',
                                                                 shuffle=True),
                              collate_fn=dict(type='default_collate'), batch_size=2,
                              num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.5, by_epoch=False, end=2),
                         dict(type='MultiStepLR', milestones=[3], by_epoch=False)],
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=100),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        resume=resume,
        load_from=load_from,
        default_scope='mmdet',
        experiment_name=f'exp-{os.path.basename(str(work_dir))}-{max_iters}-{resume}')


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('runner')
    runner = make_runner(work_dir, max_iters=2)
    runner.train()
    return work_dir, str(work_dir / 'iter_2.pth'), runner.model.state_dict()


def global_names(entries):
    return {e[1] if isinstance(e, tuple) else f'{e.__module__}.{e.__qualname__}'
            for e in entries}


def test_allow_list_is_what_runner_checkpoints_need(runner_checkpoint):
    """The checkpoint needs more than torch's defaults; we allow exactly that, plus the numpy
    1.x names of the same numpy functions and the numeric dtype classes (types torch checks when
    it restores a dtype's state, which the global scan cannot list)."""
    _, path, _ = runner_checkpoint
    ours = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    finally:
        torch.serialization.add_safe_globals(ours)
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in needed
    assert 'builtins.getattr' in needed
    allowed = global_names(mmengine_checkpoint_globals())
    numpy1_aliases = {n.replace('numpy._core', 'numpy.core') for n in needed}
    dtype_classes = global_names(NUMERIC_DTYPE_CLASSES)
    assert needed <= allowed <= needed | numpy1_aliases | dtype_classes


def test_getattr_is_limited_to_history_buffer_statistics():
    assert history_buffer_method(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for owner, name in [(HistoryBuffer, '__init__'), (os, 'system'),
                        (HistoryBuffer, 'register_statistics')]:
        with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
            history_buffer_method(owner, name)


def test_resume_a_runner_checkpoint(runner_checkpoint, tmp_path):
    work_dir, path, _ = runner_checkpoint
    assert torch.load(path, map_location='cpu')['meta']['iter'] == 2  # weights_only default
    runner = make_runner(tmp_path, max_iters=4, resume=True, load_from=path)
    runner.train()
    assert runner.iter == 4
    scalars = runner.message_hub.log_scalars
    assert 'train/loss' in scalars and len(scalars['train/loss'].data[0]) == 4


def test_load_a_trained_model_for_testing(runner_checkpoint):
    _, path, state = runner_checkpoint
    model = ToyModel()
    load_checkpoint(model, path, map_location='cpu', strict=True)
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_hostile_pickle_in_a_checkpoint_does_not_run(runner_checkpoint, tmp_path):
    _, path, _ = runner_checkpoint
    ckpt = torch.load(path, map_location='cpu')
    marker = tmp_path / 'pwned'
    ckpt['meta']['payload'] = Exploit(marker)
    hostile = str(tmp_path / 'hostile.pth')
    torch.save(ckpt, hostile)
    with pytest.raises(pickle.UnpicklingError):
        _load_checkpoint(hostile, map_location='cpu')
    with pytest.raises(pickle.UnpicklingError):
        make_runner(tmp_path / 'resume', max_iters=4, resume=True, load_from=hostile).train()
    assert not marker.exists()
