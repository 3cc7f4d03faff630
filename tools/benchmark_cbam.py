"""Speed and memory of the fused CBAM against the eager reference and against plain ResNet-50.

    python tools/benchmark_cbam.py [--device cpu] [--threads 2] [--modes fp32 [amp compile]]
                                   [--amp-dtypes bf16 [fp16]] [--reps 7] [--iters 3]
                                   [--out-dir work_dirs/benchmark_cbam]

Module: one CBAM (256 channels, 2x256x96x128): the fused default (``fused``: the native C++
kernels on CPU), the same with ``use_impl('torch')`` (``fused_torch``: the PyTorch-ops fused
function, which GPUs run), ``CBAM(fused=False)`` (``eager``, the reference: the authors' layout op
by op, max pooling as their ``max_pool2d``/``torch.max``) and the pre-issue eager module
(``eager_amax``: ``amax`` pooling, which splits the gradient among tied maxima).
Backbone: ``CBAMResNet`` depth 50 (fused, fused_torch, eager) against mmdet's ``ResNet`` depth 50
at 1x3x320x448, BN in training mode (``norm_eval=False``).

Settings (``--modes``, each side of a ratio in the same one): 'fp32'; 'amp' (autocast to each of
``--amp-dtypes``, as ``--amp`` trains; on CPU bf16 convolutions are emulated, so its times say
nothing about GPU training, its memory does); 'compile' (each variant wrapped in
``torch.compile``, fp32; module: fused and eager, backbone: fused and plain; its first training
and inference step, which compile, are reported apart, each variant's in a new process, by
default with an empty compile cache (``--first-step-cache empty``: a first run, neither variant
reusing kernels the other compiled; ``shared``: the cache this run's timing filled, as a restarted
or resumed run finds it), and the graph breaks that ``torch._dynamo.explain`` counts). Modes of
each setting: 'forward' (training mode, autograd recording; not under compile), 'train' (forward
+ backward with fixed random output gradients), 'inference' (eval mode, no_grad).
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
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence

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
SETTINGS = ('fp32', 'amp', 'compile')
COMPILE_MODES = ('train', 'inference')
COMPILED_VARIANTS = dict(module=('fused', 'eager'), backbone=('fused', 'plain'))


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
    parser.add_argument('--modes', nargs='+', default=['fp32'], choices=SETTINGS,
                        help='fp32, autocast (amp) and/or torch.compile (fp32)')
    parser.add_argument('--amp-dtypes', nargs='+', default=['bf16'], choices=['bf16', 'fp16'],
                        help="autocast dtypes of --modes amp")
    parser.add_argument('--reps', type=int, default=7, help='interleaved repetitions')
    parser.add_argument('--iters', type=int, default=3, help='timed calls per variant and rep')
    parser.add_argument('--scopes', nargs='+', default=['module', 'backbone'],
                        choices=['module', 'backbone'])
    parser.add_argument('--module-shape', type=int, nargs=4, default=(2, 256, 96, 128))
    parser.add_argument('--backbone-shape', type=int, nargs=4, default=(1, 3, 320, 448))
    parser.add_argument('--depth', type=int, default=50, help='backbone depth')
    parser.add_argument('--out-dir', default='work_dirs/benchmark_cbam')
    parser.add_argument('--first-step-cache', default='empty', choices=['empty', 'shared'],
                        help='compile cache of the first compiled steps (see above)')
    parser.add_argument('--first-compiled-steps', nargs=2, metavar=('SCOPE', 'VARIANT'),
                        help=argparse.SUPPRESS)  # the new process of first_steps_in_new_process
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


def input_shape(scope: str, args) -> Sequence[int]:
    return args.module_shape if scope == 'module' else args.backbone_shape


def build_variants(scope: str, args) -> Dict[str, nn.Module]:
    if scope == 'module':
        return build_module_variants(args.module_shape[1])
    return build_backbone_variants(args.depth)


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
    inp = x.requires_grad_(False)
    # Drawn at the first step, from its outputs: an extra call to shape them would be a no-grad
    # call, which torch.compile compiles apart, inside the first step's time.
    grads = []

    def step():
        if mode == 'inference':
            with torch.no_grad(), torch.autocast(**autocast):
                return model(inp)
        with torch.autocast(**autocast):
            outs = _outputs(model(inp))
        if mode == 'train':
            if not grads:
                generator = torch.Generator(inp.device).manual_seed(0)
                grads.extend(torch.randn(o.shape, generator=generator, device=o.device,
                                         dtype=o.dtype) for o in outs)
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


def first_call_ms(model: nn.Module, x: torch.Tensor, dtype: torch.dtype,
                  mode: str = 'train') -> float:
    """Time of the first step of ``mode`` of a model that has not run it yet (no warm-up; under
    torch.compile this includes compiling)."""
    start = time.perf_counter()
    make_step(model, x, mode, dtype)()
    _sync(x.device)
    return (time.perf_counter() - start) * 1e3


def first_steps_in_new_process(scope: str, name: str, args) -> Dict[str, float]:
    """Milliseconds of the first compiled training and inference step of variant ``name``, run
    in a new process with an empty ``TORCHINDUCTOR_CACHE_DIR`` (``--first-step-cache empty``:
    what a user's first compiled run costs, without kernels an earlier variant compiled) or
    with this process's (``shared``)."""
    argv = [sys.executable, osp.abspath(__file__), '--first-compiled-steps', scope, name,
            '--device', args.device, '--threads', str(args.threads), '--depth', str(args.depth),
            '--module-shape', *map(str, args.module_shape),
            '--backbone-shape', *map(str, args.backbone_shape)]
    with tempfile.TemporaryDirectory() as empty:
        env = os.environ.copy()
        if args.first_step_cache == 'empty':
            env['TORCHINDUCTOR_CACHE_DIR'] = empty
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'the first compiled steps of {scope} {name} failed:\n{done.stderr}')
    return json.loads(done.stdout.splitlines()[-1])


def first_compiled_steps(scope: str, name: str, args, device) -> Dict[str, float]:
    model = build_variants(scope, args)[name].to(device)
    x = torch.randn(*input_shape(scope, args), device=device)
    compiled = torch.compile(model)
    return {mode: first_call_ms(compiled, x, torch.float32, mode) for mode in COMPILE_MODES}


def graph_breaks(model: nn.Module, x: torch.Tensor, mode: str) -> dict:
    """What ``torch._dynamo.explain`` finds in one ``mode`` call of ``model``: graphs, graph
    breaks and their reasons."""
    import torch._dynamo
    model.train(mode != 'inference')
    with torch.set_grad_enabled(mode != 'inference'):
        explanation = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    return dict(graphs=explanation.graph_count, breaks=explanation.graph_break_count,
                reasons=[str(reason.reason).splitlines()[0]
                         for reason in explanation.break_reasons])


def settings(args) -> List[tuple]:
    """(name, dtype, compiled) of each setting ``--modes`` asks for."""
    chosen = []
    for setting in args.modes:
        if setting == 'amp':
            chosen += [(f'amp-{name}', DTYPES[name], False) for name in args.amp_dtypes]
        else:
            chosen.append((setting, torch.float32, setting == 'compile'))
    return chosen


def median_ratio(times: Dict[str, List[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def benchmark(scope: str, variants: Dict[str, nn.Module], shape, args, device) -> List[dict]:
    reference = 'plain' if scope == 'backbone' else 'eager'
    rows = []
    for setting, dtype, compiled in settings(args):
        x = torch.randn(*shape, device=device)
        models, modes, extra = variants, MODES, {}
        if compiled:
            models = {name: torch.compile(variants[name]) for name in COMPILED_VARIANTS[scope]}
            modes = COMPILE_MODES
            extra['graph_breaks'] = {name: graph_breaks(variants[name], x, 'train')
                                     for name in models}
        else:
            extra['first_train_step_ms'] = {
                name: first_call_ms(m, x, dtype) for name, m in models.items()}
        # Saved-tensor hooks and compiled graphs do not mix: no memory under compile.
        memory = None if compiled else {name: peak_train_bytes(m, x, dtype)
                                        for name, m in models.items()}
        for mode in modes:
            print(f'timing {scope} {setting} {mode} ...', flush=True)
            steps = {name: make_step(m, x, mode, dtype) for name, m in models.items()}
            times = time_interleaved(steps, device, args.reps, args.iters)
            row = dict(scope=scope, setting=setting, mode=mode, reference=reference,
                       ms={name: statistics.median(t) for name, t in times.items()},
                       ms_per_rep=times,
                       ratio_to_reference={
                           name: median_ratio(times, name, reference)
                           for name in models if name != reference})
            if mode == 'train':
                if memory is not None:
                    row['train_bytes'] = memory
                    row['memory_ratio_to_reference'] = {
                        name: memory[name] / memory[reference] for name in models
                        if name != reference}
                row.update(extra)
                train_row = row
            rows.append(row)
        if compiled:  # after the timing, which fills the cache that 'shared' first steps use
            steps_ms = {name: first_steps_in_new_process(scope, name, args) for name in models}
            for key, mode in (('first_train_step_ms', 'train'),
                              ('first_inference_step_ms', 'inference')):
                train_row[key] = {name: ms[mode] for name, ms in steps_ms.items()}
    return rows


def format_table(rows: List[dict]) -> str:
    lines = ['| scope | setting | mode | variant | ms | / reference | memory / reference |',
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
            lines.append(f"| {row['scope']} | {row['setting']} | {row['mode']} | {name} | "
                         f'{ms:.2f} | {ratio} | {memory} |')
    return '\n'.join(lines)


def format_first_steps(rows: List[dict]) -> str:
    """One line per setting and scope: each variant's first training step (and, under compile,
    first inference step and graph breaks)."""
    lines = []
    for row in rows:
        if 'first_train_step_ms' not in row:
            continue
        parts = []
        for name, ms in row['first_train_step_ms'].items():
            part = f'{name} {ms / 1e3:.1f} s'
            if 'first_inference_step_ms' in row:
                breaks = row['graph_breaks'][name]
                part += (f" (inference {row['first_inference_step_ms'][name] / 1e3:.1f} s; "
                         f"{breaks['graphs']} graphs, {breaks['breaks']} breaks)")
            parts.append(part)
        lines.append(f"first train step, {row['scope']} {row['setting']}: " + ', '.join(parts))
    return '\n'.join(lines)


def plot(rows: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    labels, values = [], []
    for row in rows:
        where = f"{row['scope']} {row['setting']}"
        for name, ratio in row['ratio_to_reference'].items():
            labels.append(f"{where} {row['mode']}\n{name}/{row['reference']}")
            values.append(ratio)
        for name, ratio in row.get('memory_ratio_to_reference', {}).items():
            labels.append(f"{where} memory\n{name}/{row['reference']}")
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
    if args.first_compiled_steps:
        print(json.dumps(first_compiled_steps(*args.first_compiled_steps, args, device)))
        return {}
    rows = []
    for scope in args.scopes:
        variants = build_variants(scope, args)
        rows += benchmark(scope, {k: v.to(device) for k, v in variants.items()},
                          input_shape(scope, args), args, device)
    result = dict(
        device=torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name(),
        device_type=device.type, threads=torch.get_num_threads(), torch=torch.__version__,
        args=vars(args), rows=rows)
    table = format_table(rows)
    print(f"device {result['device']} ({device.type}), {result['threads']} threads, "
          f"torch {torch.__version__}, {args.reps} reps x {args.iters} iters\n{table}\n"
          f'{format_first_steps(rows)}')
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(dict(result, table=table), f, indent=1)
    plot(rows, osp.join(args.out_dir, 'ratios.png'))
    return result


if __name__ == '__main__':
    main()
