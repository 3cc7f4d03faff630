"""Test (evaluate) a trained detector, as mmdet's tools/test.py does, with cbam_mmdet loaded.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                         [--metrics-json metrics.json] [--cfg-options KEY=VALUE ...]
                         [--launcher pytorch]

The checkpoint is loaded with torch's weights_only protection on (see README); a missing or
unreadable checkpoint and a bad test dataset are refused before the Runner is built
(``--no-dataset-check`` skips the dataset check).
"""
import argparse
import json
import os.path as osp
import sys

from mmengine.config import Config

import cbam_mmdet  # noqa: F401 - registers the components, makes checkpoints loadable

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from train import add_runner_args, build_runner, check_data, load_config  # noqa: E402

from cbam_mmdet.utils.pretrained import read_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='also dump the predictions to this pickle file')
    parser.add_argument('--metrics-json',
                        help='also write the evaluation metrics to this JSON file')
    add_runner_args(parser)
    return parser.parse_args(argv)


def build_config(args) -> Config:
    read_checkpoint(args.checkpoint, mmap=True)
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    return cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = build_config(args)
    check_data(cfg, args, ('test', ))
    runner = build_runner(cfg)
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
