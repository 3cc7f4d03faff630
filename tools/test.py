"""Test (evaluate) a trained detector, as mmdet's tools/test.py does, with cbam_mmdet loaded.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                         [--cfg-options KEY=VALUE ...] [--launcher pytorch]

The checkpoint is loaded with torch's weights_only protection on (see README).
"""
import argparse
import json
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction

import cbam_mmdet  # noqa: F401 - registers the components, makes checkpoints loadable

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from train import build_runner, use_cpu_distributed  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and evaluation results')
    parser.add_argument('--out', help='also dump the predictions to this pickle file')
    parser.add_argument('--metrics-json', help='also write the evaluation metrics to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args) -> Config:
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint} does not exist')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if cfg.launcher != 'none' and not torch.cuda.is_available():
        use_cpu_distributed(cfg)
    return cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    runner = build_runner(build_config(args))
    if args.out:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    if args.metrics_json:
        with open(args.metrics_json, 'w') as f:
            json.dump(metrics, f, indent=2)
    return metrics


if __name__ == '__main__':
    main()
