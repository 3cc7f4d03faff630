"""Parameters and GFLOPs of every config in configs/ and of paper Table 4's classifiers.

    python tools/analysis/complexity.py [CONFIG ...] [--out-dir work_dirs/complexity]
                                        [--no-table4]

Configs (all of configs/ when none are named) are measured at their test input size (the largest
image the test pipeline's Resize produces, padded like the preprocessor), Table 4's ImageNet
classifiers at 224x224 beside the paper's figures. Counting convention: see
``cbam_mmdet/runtime/complexity.py``. Writes complexity.md (the README's tables) and
complexity.json to --out-dir and prints the Markdown.
"""
import argparse
import glob
import json
import os
import os.path as osp

from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar

import cbam_mmdet  # noqa: F401 - registers the components
from cbam_mmdet.runtime.complexity import (TABLE4, classifier_complexity, detector_complexity,
                                           with_cbam)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='*', help='configs to measure (default: configs/**)')
    parser.add_argument('--out-dir', default='work_dirs/complexity')
    parser.add_argument('--no-table4', action='store_true', help='skip the Table 4 classifiers')
    return parser.parse_args(argv)


def measure_configs(paths):
    rows = []
    progress = ProgressBar(len(paths))
    for path in paths:
        result = detector_complexity(Config.fromfile(path))
        rows.append(dict(config=osp.relpath(path, REPO), **result))
        progress.update()
    return rows


def measure_table4():
    rows = []
    for name, (backbone, plain_paper, cbam_paper) in TABLE4.items():
        for variant, cfg, (paper_params, paper_gflops) in [
                ('', backbone, plain_paper),
                (' + CBAM', with_cbam(backbone), cbam_paper)]:
            params, flops = classifier_complexity(cfg)
            rows.append(dict(network=name + variant, params=params, gflops=flops / 1e9,
                             paper_params_m=paper_params, paper_gflops=paper_gflops))
    return rows


def to_markdown(config_rows, table4_rows) -> str:
    lines = []
    if config_rows:
        lines += ['| config | params | test input (WxH) | GFLOPs backbone+neck | GFLOPs total '
                  '(RoIs) |', '|---|---|---|---|---|']
        for r in config_rows:
            rois = f' ({r["rois"]})' if r['rois'] is not None else ''
            lines.append(f'| `{osp.basename(r["config"])}` | {r["params"] / 1e6:.2f}M | '
                         f'{r["input"]} | {r["features"] / 1e9:.1f} | '
                         f'{r["total"] / 1e9:.1f}{rois} |')
    if table4_rows:
        lines += ['', '| network | params, paper | params, ours | GFLOPs, paper | GFLOPs, ours |',
                  '|---|---|---|---|---|']
        for r in table4_rows:
            lines.append(f'| {r["network"]} | {r["paper_params_m"]:.2f}M | '
                         f'{r["params"] / 1e6:.2f}M | {r["paper_gflops"]:.3f} | '
                         f'{r["gflops"]:.3f} |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> dict:
    args = parse_args(argv)
    init_default_scope('mmdet')
    paths = args.configs or sorted(glob.glob(osp.join(REPO, 'configs', '**', '*.py'),
                                             recursive=True))
    config_rows = measure_configs(paths)
    table4_rows = [] if args.no_table4 else measure_table4()
    os.makedirs(args.out_dir, exist_ok=True)
    markdown = to_markdown(config_rows, table4_rows)
    with open(osp.join(args.out_dir, 'complexity.md'), 'w') as f:
        f.write(markdown)
    results = dict(configs=config_rows, table4=table4_rows)
    with open(osp.join(args.out_dir, 'complexity.json'), 'w') as f:
        json.dump(results, f, indent=2)
    print('\n' + markdown)
    return results


if __name__ == '__main__':
    main()
