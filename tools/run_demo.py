"""`make demo`: train a baseline and a CBAM Faster R-CNN on the built-in synthetic data and compare.

    python tools/run_demo.py [--data-dir data/synthetic] [--work-dir work_dirs/demo]
                             [--max-iters N]

Generates the synthetic COCO/VOC dataset if it is missing, trains
configs/demo/faster-rcnn_r18_fpn_200i_synthetic.py and its CBAM twin with tools/train.py (the
same command a user runs; its log shows progress), evaluates each final checkpoint with mmdet's
CocoMetric through tools/test.py, and prints one table. The numbers go to WORK_DIR/results.json.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

TOOLS = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(TOOLS)
MODELS = (('Faster R-CNN R18-FPN', 'configs/demo/faster-rcnn_r18_fpn_200i_synthetic.py'),
          ('Faster R-CNN R18-CBAM-FPN', 'configs/demo/faster-rcnn_r18-cbam_fpn_200i_synthetic.py'))
METRICS = (('mAP', 'coco/bbox_mAP'), ('mAP@.5', 'coco/bbox_mAP_50'),
           ('mAP@.75', 'coco/bbox_mAP_75'))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-dir', default='data/synthetic')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--max-iters', type=positive_int,
                        help='shorter training for a quick check (the lr schedule is not rescaled)')
    return parser.parse_args(argv)


def ensure_dataset(data_dir: str) -> None:
    if osp.isfile(osp.join(data_dir, 'coco', 'annotations', 'instances_val.json')):
        print(f'[demo] using the synthetic dataset in {data_dir}', flush=True)
        return
    print(f'[demo] generating the synthetic dataset in {data_dir}', flush=True)
    subprocess.run([sys.executable, osp.join(TOOLS, 'make_synthetic_dataset.py'), data_dir],
                   check=True)


def count_params(config: str) -> int:
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmdet.registry import MODELS as DET_MODELS
    cfg = Config.fromfile(config)
    init_default_scope('mmdet')
    return sum(p.numel() for p in DET_MODELS.build(cfg.model).parameters())


def train_and_test(name: str, config: str, work_dir: str, options: list) -> dict:
    shutil.rmtree(work_dir, ignore_errors=True)  # every demo run trains from scratch
    print(f'\n[demo] training {name}: {config}', flush=True)
    start = time.time()
    subprocess.run([sys.executable, osp.join(TOOLS, 'train.py'), config, '--work-dir', work_dir,
                    '--cfg-options', *options], check=True)
    train_seconds = time.time() - start
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    print(f'[demo] evaluating {name}: {checkpoint}', flush=True)
    metrics_file = osp.join(work_dir, 'test_metrics.json')
    subprocess.run([sys.executable, osp.join(TOOLS, 'test.py'), config, checkpoint,
                    '--work-dir', work_dir, '--metrics-json', metrics_file,
                    '--cfg-options', *options], check=True)
    with open(metrics_file) as f:
        metrics = json.load(f)
    return dict(model=name, config=config, params=count_params(config),
                train_seconds=round(train_seconds, 1),
                **{label: metrics[key] for label, key in METRICS})


def format_table(rows: list) -> str:
    header = ['model', 'params', 'train time'] + [label for label, _ in METRICS]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        cells = [row['model'], f"{row['params'] / 1e6:.2f}M", f"{row['train_seconds']:.0f} s"]
        cells += [f'{row[label]:.3f}' for label, _ in METRICS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.chdir(REPO)
    ensure_dataset(args.data_dir)
    data_root = osp.join(args.data_dir, 'coco') + '/'
    options = [f'train_dataloader.dataset.data_root={data_root}',
               f'val_dataloader.dataset.data_root={data_root}',
               f'test_dataloader.dataset.data_root={data_root}',
               f'val_evaluator.ann_file={data_root}annotations/instances_val.json',
               f'test_evaluator.ann_file={data_root}annotations/instances_val.json']
    if args.max_iters:
        options.append(f'train_cfg.max_iters={args.max_iters}')
        options.append(f'train_cfg.val_interval={args.max_iters}')
    rows = []
    for name, config in MODELS:
        stem = osp.splitext(osp.basename(config))[0]
        rows.append(train_and_test(name, config, osp.join(args.work_dir, stem), options))
    table = format_table(rows)
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(rows, f, indent=2)
    print('\n[demo] synthetic COCO val (CocoMetric), trained from scratch on 2 CPU threads:')
    print(table)


if __name__ == '__main__':
    main()
