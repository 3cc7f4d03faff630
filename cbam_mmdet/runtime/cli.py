"""The command-line plumbing tools/train.py and tools/test.py share (mmdet's arguments)."""
import argparse
import os
import os.path as osp

import torch
import torch.nn as nn
from mmengine.config import Config, DictAction
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .dataset_checks import check_datasets
from .ranks import is_first_process


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """Add the arguments tools/train.py and tools/test.py share (mmdet's)."""
    parser.add_argument('--work-dir', help='the dir to save logs, models and results')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument('--no-dataset-check', action='store_true',
                        help='skip checking the annotation and image files before the run')


def check_data(cfg: Config, args: argparse.Namespace, splits) -> None:
    """Check the datasets of ``splits`` on the first process (see --no-dataset-check)."""
    if args.no_dataset_check or not is_first_process(cfg.launcher):
        return
    for line in check_datasets(cfg, splits):
        print(f'dataset check: {line}', flush=True)


def load_config(args: argparse.Namespace) -> Config:
    """``args.config`` with the shared arguments applied."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    if cfg.launcher != 'none' and not torch.cuda.is_available():
        use_cpu_distributed(cfg)
    return cfg


def use_cpu_distributed(cfg: Config) -> None:
    """mmengine assumes one GPU per process: on a CPU-only machine start gloo here (the Runner
    then skips its own, CUDA-only set-up) and wrap the model without device ids."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(
        type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))


def build_runner(cfg: Config) -> Runner:
    """The Runner of ``cfg`` (its own ``runner_type`` if it names one), as mmdet's tools build
    it; model-building errors get a hint where one is known, and a C4 detector whose RoI head
    lacks the backbone's CBAM gets a warning."""
    from ..models.utils import build_hints, warn_uncovered_stages
    with build_hints(cfg.get('model')):
        runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    warn_uncovered_stages(bare_model(runner.model))
    return runner


def bare_model(model: nn.Module) -> nn.Module:
    """The detector inside a distributed wrapper or a test-time-augmentation model, which is
    what mmengine's Runner loads checkpoints into."""
    return model.module if is_model_wrapper(model) or isinstance(model, BaseTTAModel) else model
