"""Test (evaluate) a trained detector, as mmdet's tools/test.py does, with cbam_mmdet loaded.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                         [--metrics-json metrics.json] [--show] [--show-dir DIR]
                         [--wait-time S] [--tta] [--allow-mismatch]
                         [--cfg-options KEY=VALUE ...] [--launcher pytorch]

The checkpoint is loaded with torch's weights_only protection on (see README); a missing or
unreadable checkpoint, one whose keys or shapes do not fit the model (``--allow-mismatch`` loads
what fits, as mmdet does) and a bad test dataset are refused before testing starts
(``--no-dataset-check`` skips the dataset check). ``--show``, ``--show-dir``, ``--wait-time`` and
``--tta`` are mmdet's: they turn on the config's ``VisualizationHook`` and wrap the model in its
test-time augmentation.
"""
import argparse
import copy
import json
import warnings

from mmengine.config import Config, ConfigDict

import cbam_mmdet  # noqa: F401 - registers the components, makes checkpoints loadable
from cbam_mmdet.runtime.checkpoints import check_checkpoint_fits, read_checkpoint
from cbam_mmdet.runtime.cli import (add_runner_args, bare_model, build_runner, check_data,
                                    load_config)
from cbam_mmdet.runtime.dataset_checks import leaf_datasets

# mmdet's defaults when a config has no test-time augmentation of its own: horizontal flip,
# merged by NMS.
DEFAULT_TTA_MODEL = dict(type='DetTTAModel',
                         tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
TTA_META_KEYS = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                 'flip_direction')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='also dump the predictions to this pickle file')
    parser.add_argument('--metrics-json',
                        help='also write the evaluation metrics to this JSON file')
    parser.add_argument('--show', action='store_true', help='show the predictions in a window')
    parser.add_argument('--show-dir', help='save the painted predictions in this directory, '
                        'inside the run\'s timestamped directory under work_dir')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='seconds each image is shown with --show')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--allow-mismatch', action='store_true',
                        help='load a checkpoint that does not fit the model (mmdet\'s lenient '
                        'loading: missing and misshapen weights keep their initialisation)')
    add_runner_args(parser)
    return parser.parse_args(argv)


def build_config(args) -> Config:
    read_checkpoint(args.checkpoint, mmap=True)
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        show_predictions(cfg, args)
    if args.tta:
        use_tta(cfg)
    return cfg


def show_predictions(cfg: Config, args) -> None:
    """Turn on the drawing of the config's ``VisualizationHook`` (mmdet's --show, --show-dir)."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise ValueError(f'{args.config}: --show and --show-dir need a VisualizationHook in '
                         f'default_hooks, e.g. visualization=dict(type=\'DetVisualizationHook\')')
    hook.draw = True
    if args.show:
        hook.show, hook.wait_time = True, args.wait_time
    if args.show_dir:
        hook.test_out_dir = args.show_dir


def use_tta(cfg: Config) -> None:
    """Wrap the model in the config's ``tta_model`` and test with its ``tta_pipeline`` (mmdet's
    --tta); a config without them gets flip augmentation merged by NMS, as in mmdet."""
    if 'tta_model' not in cfg:
        warnings.warn('the config has no tta_model: using flip TTA merged by NMS (mmdet\'s '
                      'default)')
        cfg.tta_model = DEFAULT_TTA_MODEL
    dataset = leaf_datasets(cfg.test_dataloader.dataset)[0]
    if 'tta_pipeline' not in cfg:
        warnings.warn('the config has no tta_pipeline: using its test pipeline with a '
                      'horizontal flip (mmdet\'s default)')
        cfg.tta_pipeline = copy.deepcopy(dataset.pipeline)
        cfg.tta_pipeline[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
            [dict(type='PackDetInputs', meta_keys=TTA_META_KEYS)]])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    dataset.pipeline = cfg.tta_pipeline


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = build_config(args)
    check_data(cfg, args, ('test', ))
    runner = build_runner(cfg)
    if not args.allow_mismatch:
        check_checkpoint_fits(bare_model(runner.model), args.checkpoint,
                              f'the model of {args.config}', '--allow-mismatch')
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
