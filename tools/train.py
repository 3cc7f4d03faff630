"""Train a detector with mmengine's Runner, as mmdet's tools/train.py does, with cbam_mmdet loaded.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp]
                          [--auto-scale-lr] [--cfg-options KEY=VALUE ...] [--launcher pytorch]
                          [--no-dataset-check]

Before the Runner is built, the first process checks the train and val datasets on disk
(annotation files, image files; ``cbam_mmdet.runtime.dataset_checks``) and a ``--resume``
checkpoint.

Distributed runs: tools/dist_train.sh CONFIG NUM_PROCESSES. On machines without CUDA the processes
talk over gloo (NCCL needs GPUs).
"""
import argparse
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.runner import find_latest_checkpoint

import cbam_mmdet  # noqa: F401 - registers the components, makes checkpoints loadable
from cbam_mmdet.runtime.checkpoints import read_checkpoint
from cbam_mmdet.runtime.cli import add_runner_args, build_runner, check_data, load_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate to the actual batch size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or without a value from the latest one in work_dir')
    add_runner_args(parser)
    return parser.parse_args(argv)


def build_config(args) -> Config:
    """The config with the command line applied, as mmdet's tools/train.py builds it."""
    cfg = load_config(args)
    if args.amp:
        if not torch.cuda.is_available():
            raise ValueError('--amp needs a GPU: mmengine\'s AmpOptimWrapper runs on CUDA, NPU, '
                             'MLU or MUSA devices only; train without --amp on this machine')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ValueError(f'{args.config}: --auto-scale-lr needs '
                             f'auto_scale_lr = dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if cfg.get('resume'):
        reuse_checkpoint_seed(cfg, resume_checkpoint(cfg))
    return cfg


def resume_checkpoint(cfg: Config) -> Optional[dict]:
    """The checkpoint ``--resume`` will load (tensors mapped, not read), so that a missing or
    unreadable one is refused before anything is built; None while work_dir has none."""
    path = cfg.get('load_from') or find_latest_checkpoint(cfg.work_dir)
    return read_checkpoint(path, mmap=True) if path else None


def reuse_checkpoint_seed(cfg: Config, checkpoint: Optional[dict]) -> None:
    """Resume with the seed of the run being resumed when the config sets none.

    mmengine builds the dataloader (sampler order, worker seeds) from the seed before it reads the
    checkpoint, and re-seeds everything afterwards when the seeds differ; an unset seed is drawn
    at random, so the resumed run would see other data and other random draws.
    """
    if not isinstance(checkpoint, dict) or cfg.get('randomness', {}).get('seed') is not None:
        return
    seed = checkpoint.get('meta', {}).get('seed')
    if seed is not None:
        cfg.randomness = dict(cfg.get('randomness', {}), seed=seed)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = build_config(args)
    check_data(cfg, args, ('train', 'val'))
    build_runner(cfg).train()


if __name__ == '__main__':
    main()
