"""onnxruntime CPU inference of CBAM-ResNet against plain ResNet, at one thread count.

    python tools/benchmark_onnx.py [--depth 50] [--shape 1 3 320 448] [--threads 2] [--reps 7]
                                   [--iters 3] [--opset 18] [--out-dir work_dirs/benchmark_onnx]

Builds ``CBAMResNet`` (CBAM in every block, default options) and mmdet's ``ResNet`` of the same
depth (inference settings: eval mode), exports both with ``torch.onnx.export(dynamo=True)`` (the
exported CBAM is its eager ops), checks each file against PyTorch, and times onnxruntime CPU
sessions (``intra_op_num_threads=--threads``) interleaved as ``benchmark_cbam.py`` does: the
reported ratio is the median over repetitions of the ratio of per-repetition medians. PyTorch's
own inference (CBAM on its default fast path) is timed alongside at the same thread count.

Prints one table and writes results.json to --out-dir.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import tempfile

import torch
from benchmark_cbam import build_backbone_variants, cpu_name, median_ratio, time_interleaved

from cbam_mmdet.deployment import export_onnx, onnx_session, relative_difference, run_onnx
from cbam_mmdet.deployment.onnx_export import DEFAULT_OPSET


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--depth', type=int, default=50, help='ResNet depth')
    parser.add_argument('--shape', type=int, nargs=4, default=(1, 3, 320, 448))
    parser.add_argument('--threads', type=int, default=2, help='threads of both runtimes')
    parser.add_argument('--reps', type=int, default=7, help='interleaved repetitions')
    parser.add_argument('--iters', type=int, default=3, help='timed calls per variant and rep')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET)
    parser.add_argument('--out-dir', default='work_dirs/benchmark_onnx')
    return parser.parse_args(argv)


def onnx_step(model: torch.nn.Module, x: torch.Tensor, folder: str, name: str, threads: int,
              opset: int):
    """Export ``model``, check it against PyTorch; a callable running the session on ``x``."""
    path = osp.join(folder, f'{name}.onnx')
    with torch.no_grad():
        expected = model(x)
    outputs = [f'feat{i}' for i in range(len(expected))]
    export_onnx(model, x, path, outputs, opset=opset)
    session = onnx_session(path, threads)
    worst = max(relative_difference(a, e) for a, e in zip(run_onnx(session, x), expected))
    feed = {'image': x.numpy()}
    return (lambda: session.run(None, feed)), worst


def torch_step(model: torch.nn.Module, x: torch.Tensor):

    def step():
        with torch.no_grad():
            return model(x)

    return step


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = build_backbone_variants(args.depth)
    models = dict(cbam=variants['fused'], plain=variants['plain'])
    x = torch.randn(*args.shape)
    steps, parity = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            model.eval()
            steps[f'onnxruntime_{name}'], parity[name] = onnx_step(model, x, folder, name,
                                                                   args.threads, args.opset)
            steps[f'torch_{name}'] = torch_step(model, x)
        print('timing ...', flush=True)
        times = time_interleaved(steps, torch.device('cpu'), args.reps, args.iters)
    rows = [
        dict(runtime=runtime, cbam_ms=statistics.median(times[f'{runtime}_cbam']),
             plain_ms=statistics.median(times[f'{runtime}_plain']),
             ratio=median_ratio(times, f'{runtime}_cbam', f'{runtime}_plain'))
        for runtime in ('onnxruntime', 'torch')
    ]
    table = '\n'.join(
        [f'| runtime | CBAM-R{args.depth} ms | R{args.depth} ms | CBAM / plain |',
         '|---|---|---|---|'] +
        [f"| {r['runtime']} | {r['cbam_ms']:.2f} | {r['plain_ms']:.2f} | {r['ratio']:.3f} |"
         for r in rows])
    import onnxruntime
    result = dict(device=cpu_name(), threads=args.threads, torch=torch.__version__,
                  onnxruntime=onnxruntime.__version__, args=vars(args), rows=rows,
                  ms_per_rep=times, onnx_max_relative_difference=parity, table=table)
    print(f"{result['device']}, {args.threads} threads, torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, input {'x'.join(map(str, args.shape))}, {args.reps} reps "
          f"x {args.iters} iters\n{table}\nonnxruntime vs PyTorch, largest relative difference: "
          + ', '.join(f'{k} {v:.1e}' for k, v in parity.items()))
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
