"""Speed and memory of the fused CBAM against the eager reference and against plain ResNet-50.

    python tools/benchmark_cbam.py [--device cpu] [--threads 2] [--dtypes fp32 [bf16 fp16]]
                                   [--reps 7] [--iters 3] [--out-dir work_dirs/benchmark_cbam]

Module: one CBAM (256 channels, 2x256x96x128): the fused default (``fused``: the native C++
kernels on CPU), the same with ``use_impl('torch')`` (``fused_torch``: the PyTorch-ops fused
function, which GPUs run), ``CBAM(fused=False)`` (``eager``, the reference: the authors' layout op
by op, max pooling as their ``max_pool2d``/``torch.max``) and the pre-issue eager module
(``eager_amax``: ``amax`` pooling, which splits the gradient among tied maxima).
Backbone: ``CBAMResNet`` depth 50 (fused, fused_torch, eager) against mmdet's ``ResNet`` depth 50
at 1x3x320x448, BN in training mode (``norm_eval=False``).

Modes: 'forward' (training mode, autograd recording), 'train' (forward + backward with fixed
random output gradients), 'inference' (eval mode, no_grad). Non-fp32 dtypes run under autocast.
Variants are timed interleaved: each repetition runs every variant ``--iters`` times (in rotated
order) and the ratio of the per-repetition medians is taken; the reported ratio is the median over
repetitions, so slow phases of a shared machine hit both sides of a ratio alike.

Memory of a training step: on CUDA the peak allocated bytes of the step above the model's own;
on CPU the bytes of the distinct storages autograd saves for backward, parameters excluded
(captured with ``torch.autograd.graph.saved_tensors_hooks``; the input included), which is what
a training step holds at its peak besides parameters, gradients and the output.

Prints one table, writes results.json and ratios.png to --out-dir.
"""
import argparse
import json
import logging
import os
import os.path as osp
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn
from mmengine.logging import MMLogger

from cbam_mmdet.models.backbones.cbam_resnet import CBAMResNet
from cbam_mmdet.models.layers import CBAM, use_impl
from cbam_mmdet.models.utils import mmdet_scope_if_unset
from cbam_mmdet.runtime.memory import saved_tensor_bytes
from mmdet.models.backbones import ResNet

DTYPES = dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)
MODES = ('forward', 'train', 'inference')


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        return names[0]
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch)')
    parser.add_argument('--dtypes', nargs='+', default=['fp32'], choices=list(DTYPES))
    parser.add_argument('--reps', type=int, default=7, help='interleaved repetitions')
    parser.add_argument('--iters', type=int, default=3, help='timed calls per variant and rep')
    parser.add_argument('--scopes', nargs='+', default=['module', 'backbone'],
                        choices=['module', 'backbone'])
    parser.add_argument('--module-shape', type=int, nargs=4, default=(2, 256, 96, 128))
    parser.add_argument('--backbone-shape', type=int, nargs=4, default=(1, 3, 320, 448))
    parser.add_argument('--depth', type=int, default=50, help='backbone depth')
    parser.add_argument('--out-dir', default='work_dirs/benchmark_cbam')
    return parser.parse_args(argv)


class AmaxCBAM(nn.Module):
    """The module before the fast path: eager ops with ``amax`` pooling (shares ``cbam``'s
    parameters; 'channel_first' with the 'pool' descriptor only)."""

    def __init__(self, cbam: CBAM):
        super().__init__()
        self.cbam = cbam

    def forward(self, x):
        gate = self.cbam.channel_gate
        pooled = [x.mean((2, 3)) if p == 'avg' else x.amax((2, 3)) for p in gate.pool_types]
        x = x * torch.sigmoid(gate.mlp(torch.stack(pooled)).sum(0))[:, :, None, None]
        desc = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.cbam.spatial_gate.spatial(desc))


class TorchOpsPath(nn.Module):
    """``model`` with its CBAMs on the PyTorch-ops fused implementation (``use_impl('torch')``
    around forward; backward follows the path forward chose)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with use_impl('torch'):
            return self.model(x)


def quiet_init(init_weights: Callable) -> None:
    """Call ``init_weights`` without mmengine's per-parameter report."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        init_weights()
    finally:
        logger.setLevel(level)


def build_module_variants(channels: int) -> Dict[str, nn.Module]:
    fused = CBAM(channels)
    quiet_init(fused.init_weights)
    nn.init.normal_(fused.spatial_gate.spatial.norm.weight)  # a trained-like, non-constant Ms
    eager = CBAM(channels, fused=False)
    eager.load_state_dict(fused.state_dict())
    return dict(fused=fused, fused_torch=TorchOpsPath(fused), eager=eager,
                eager_amax=AmaxCBAM(eager))


def build_backbone_variants(depth: int) -> Dict[str, nn.Module]:
    common = dict(depth=depth, norm_eval=False)
    with mmdet_scope_if_unset():
        fused = CBAMResNet(**common)
        eager = CBAMResNet(cbam_cfg=dict(type='CBAM', fused=False), **common)
        plain = ResNet(**common)
    quiet_init(fused.init_weights)
    eager.load_state_dict(fused.state_dict())
    quiet_init(plain.init_weights)
    return dict(fused=fused, fused_torch=TorchOpsPath(fused), eager=eager, plain=plain)


def _outputs(out) -> List[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def make_step(model: nn.Module, x: torch.Tensor, mode: str, dtype: torch.dtype) -> Callable:
    """A callable running one forward / training step / inference of ``model`` on ``x``."""
    autocast = dict(device_type=x.device.type, dtype=dtype, enabled=dtype != torch.float32)
    model.train(mode != 'inference')
    with torch.no_grad(), torch.autocast(**autocast):
        grads = [torch.randn_like(o) for o in _outputs(model(x))]
    inp = x.requires_grad_(False)

    def step():
        if mode == 'inference':
            with torch.no_grad(), torch.autocast(**autocast):
                return model(inp)
        with torch.autocast(**autocast):
            outs = _outputs(model(inp))
        if mode == 'train':
            torch.autograd.backward(outs, grads)
            model.zero_grad(set_to_none=True)
        return outs

    return step


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(steps: Dict[str, Callable], device, reps: int, iters: int) -> Dict:
    """Median milliseconds per variant and per repetition, variants interleaved."""
    names = list(steps)
    times = {name: [] for name in names}
    for step in steps.values():  # warm-up: allocator, kernels, lazy inits
        step()
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            samples = []
            for _ in range(iters):
                _sync(device)
                start = time.perf_counter()
                steps[name]()
                _sync(device)
                samples.append((time.perf_counter() - start) * 1e3)
            times[name].append(statistics.median(samples))
    return times


def peak_train_bytes(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> int:
    step = make_step(model, x, 'train', dtype)
    if x.device.type != 'cuda':
        return saved_tensor_bytes(make_step(model, x, 'forward', dtype), model.parameters())
    step()
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    base = torch.cuda.memory_allocated(x.device)
    step()
    torch.cuda.synchronize(x.device)
    return torch.cuda.max_memory_allocated(x.device) - base


def first_call_ms(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> float:
    """Time of the first training step of a freshly built model (no warm-up)."""
    start = time.perf_counter()
    make_step(model, x, 'train', dtype)()
    _sync(x.device)
    return (time.perf_counter() - start) * 1e3


def median_ratio(times: Dict[str, List[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def benchmark(scope: str, variants: Dict[str, nn.Module], shape, args, device) -> List[dict]:
    reference = 'plain' if scope == 'backbone' else 'eager'
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        x = torch.randn(*shape, device=device)
        first = {name: first_call_ms(m, x, dtype) for name, m in variants.items()}
        memory = {name: peak_train_bytes(m, x, dtype) for name, m in variants.items()}
        for mode in MODES:
            print(f'timing {scope} {dtype_name} {mode} ...', flush=True)
            steps = {name: make_step(m, x, mode, dtype) for name, m in variants.items()}
            times = time_interleaved(steps, device, args.reps, args.iters)
            row = dict(scope=scope, dtype=dtype_name, mode=mode, reference=reference,
                       ms={name: statistics.median(t) for name, t in times.items()},
                       ms_per_rep=times,
                       ratio_to_reference={
                           name: median_ratio(times, name, reference)
                           for name in variants if name != reference})
            if mode == 'train':
                row['train_bytes'] = memory
                row['memory_ratio_to_reference'] = {
                    name: memory[name] / memory[reference] for name in variants
                    if name != reference}
                row['first_train_step_ms'] = first
            rows.append(row)
    return rows


def format_table(rows: List[dict]) -> str:
    lines = ['| scope | dtype | mode | variant | ms | / reference | memory / reference |',
             '|---|---|---|---|---|---|---|']
    for row in rows:
        ref = row['reference']
        for name, ms in row['ms'].items():
            ratio = ('reference' if name == ref else
                     f"{row['ratio_to_reference'][name]:.3f}")
            memory = ''
            if 'train_bytes' in row:
                mib = row['train_bytes'][name] / 2**20
                memory = (f'{mib:.1f} MiB' if name == ref else
                          f"{row['memory_ratio_to_reference'][name]:.3f} ({mib:.1f} MiB)")
            lines.append(f"| {row['scope']} | {row['dtype']} | {row['mode']} | {name} | "
                         f'{ms:.2f} | {ratio} | {memory} |')
    return '\n'.join(lines)


def plot(rows: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    labels, values = [], []
    for row in rows:
        for name, ratio in row['ratio_to_reference'].items():
            labels.append(f"{row['scope']} {row['dtype']} {row['mode']}\n{name}/{row['reference']}")
            values.append(ratio)
        for name, ratio in row.get('memory_ratio_to_reference', {}).items():
            labels.append(f"{row['scope']} {row['dtype']} memory\n{name}/{row['reference']}")
            values.append(ratio)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(values)), 4.5))
    ax.bar(range(len(values)), values, color='tab:blue')
    ax.axhline(1.0, color='black', linewidth=0.8)
    ax.set_xticks(range(len(values)), labels, rotation=60, ha='right', fontsize=7)
    ax.set_ylabel('time (or memory) ratio, median over reps')
    ax.set_title('Fused CBAM: ratios to the reference (lower is better)')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cpu':
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    if 'module' in args.scopes:
        variants = build_module_variants(args.module_shape[1])
        rows += benchmark('module', {k: v.to(device) for k, v in variants.items()},
                          args.module_shape, args, device)
    if 'backbone' in args.scopes:
        variants = build_backbone_variants(args.depth)
        rows += benchmark('backbone', {k: v.to(device) for k, v in variants.items()},
                          args.backbone_shape, args, device)
    result = dict(
        device=torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name(),
        device_type=device.type, threads=torch.get_num_threads(), torch=torch.__version__,
        args=vars(args), rows=rows)
    table = format_table(rows)
    print(f"device {result['device']} ({device.type}), {result['threads']} threads, "
          f"torch {torch.__version__}, {args.reps} reps x {args.iters} iters\n{table}")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(dict(result, table=table), f, indent=1)
    plot(rows, osp.join(args.out_dir, 'ratios.png'))
    return result


if __name__ == '__main__':
    main()
