"""Train and test variants x seeds; report every run, means, spreads and paired differences.

    python tools/analysis/compare.py SWEEP.yaml [--seeds 0 1 2] [--jobs K] [--resume] ...
    python tools/analysis/compare.py --configs CONFIG_A CONFIG_B [--seeds ...] ...
    python tools/analysis/compare.py --config CONFIG --variant NAME [CONFIG] [KEY=VALUE ...]
                                     [--variant ...] [--baseline NAME] [--seeds ...] ...
    python tools/analysis/compare.py --resume --work-dir DIR       # continue a killed sweep

Every (variant, seed) run is ``tools/train.py`` then ``tools/test.py`` on its last checkpoint, as
subprocesses, with the sweep's common ``--cfg-options``, then the variant's, then
``randomness.seed=SEED``. Runs go one after another, or ``--jobs K`` side by side. The report
(a table on stdout; results.json, runs.csv, summary.csv, metrics.png, learning_curves.png in the
work dir) gives each variant's mean, standard deviation and every run's COCO mAP, mAP@.5 and
mAP@.75, and its mean paired difference to the baseline (runs of the same seed) with a percentile
bootstrap confidence interval. Sweep files, resuming and the statistics: docs/compare.md.
"""
import argparse
import csv
import ctypes
import fcntl
import glob
import io
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import yaml
from mmengine.config import Config, DictAction

from cbam_mmdet.runtime.atomic_files import write_atomic
from cbam_mmdet.runtime.sweep_stats import paired_difference, summarize

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
METRICS = (('mAP', 'coco/bbox_mAP'), ('mAP@.5', 'coco/bbox_mAP_50'),
           ('mAP@.75', 'coco/bbox_mAP_75'))
LOSS_KEY = 'loss'
DEFAULT_SEEDS = (0, 1, 2)
SWEEP_KEYS = ('name', 'config', 'baseline', 'seeds', 'options', 'variants')
MAX_SEED = 2**32 - 1  # numpy's generators take seeds in [0, 2**32)
LOG_TAIL_LINES = 15


class SweepError(Exception):
    """A sweep definition or work dir that cannot be run; the message says why and what to do."""


@dataclass
class Variant:
    """One arm of the comparison: a config and the ``--cfg-options`` applied to it."""
    name: str
    config: str
    options: List[str] = field(default_factory=list)


@dataclass
class Sweep:
    name: str
    variants: List[Variant]
    baseline: str
    seeds: List[int]
    options: List[str] = field(default_factory=list)  # common to every run, before the variant's


@dataclass
class Run:
    """One (variant, seed) training + test, in its own directory."""
    variant: str
    seed: int
    config: str
    options: List[str]
    dir: str
    total: Optional[tuple] = None  # ('iter', max_iters) or ('epoch', max_epochs) of the loop

    @property
    def label(self) -> str:
        return f'{self.variant!r} seed {self.seed}'

    def path(self, name: str) -> str:
        return osp.join(self.dir, name)

    @property
    def definition(self) -> dict:
        return dict(variant=self.variant, seed=self.seed, config=self.config,
                    options=self.options)


# ------------------------------------------------------------------------------------------------
# Command line and sweep definitions


def seed_value(text) -> int:
    """A seed: an integer in [0, 2**32)."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise SweepError(f'seeds must be integers, got {text!r}')
    try:
        seed = int(text)
    except ValueError:
        raise SweepError(f'seeds must be integers, got {text!r}') from None
    if not 0 <= seed <= MAX_SEED:
        raise SweepError(f'seeds must be in [0, 2**32), got {seed}')
    return seed


def argparse_seed(text: str) -> int:
    try:
        return seed_value(text)
    except SweepError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog='A variant token without "=" is its config; the others are --cfg-options.')
    parser.add_argument('sweep', nargs='?', help='a sweep file (YAML, see configs/demo/sweeps)')
    parser.add_argument('--configs', nargs='+', metavar='CONFIG',
                        help='one variant per config, named after the file')
    parser.add_argument('--config', help='the config of the variants that name none')
    parser.add_argument('--variant', nargs='+', action='append', metavar='TOKEN',
                        help='NAME [CONFIG] [KEY=VALUE ...]: one variant (repeat the flag)')
    parser.add_argument('--baseline', help='the variant the others are compared with '
                        '(default: the sweep file\'s, else the first variant)')
    parser.add_argument('--seeds', nargs='+', type=argparse_seed,
                        help=f'seeds of every variant (default: the sweep file\'s, else '
                        f'{" ".join(map(str, DEFAULT_SEEDS))})')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='options of every run, after the sweep file\'s')
    parser.add_argument('--work-dir', help='default: work_dirs/compare/<sweep name>')
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs side by side (each gets cores / jobs torch threads)')
    parser.add_argument('--resume', action='store_true',
                        help='continue the sweep in --work-dir: finished runs are kept, '
                        'interrupted ones resume from their last checkpoint')
    parser.add_argument('--confidence', type=float, default=0.95)
    parser.add_argument('--resamples', type=int, default=10000,
                        help='bootstrap resamples')
    parser.add_argument('--progress-every', type=float, default=30.0, metavar='SECONDS')
    args = parser.parse_args(argv)
    for name in ('jobs', 'resamples'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be >= 1, got {getattr(args, name)}')
    if not 0 < args.confidence < 1:
        parser.error(f'--confidence must be in (0, 1), e.g. 0.95; got {args.confidence}')
    return args


def load_sweep_file(path: str) -> dict:
    if not osp.isfile(path):
        raise SweepError(f'sweep file {path!r} not found (the shipped ones are in '
                         f'configs/demo/sweeps/)')
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise SweepError(f'{path}: not valid YAML: {exc}') from None
    if not isinstance(data, dict):
        raise SweepError(f'{path}: a sweep file is a mapping with keys {", ".join(SWEEP_KEYS)}')
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f'{path}: unknown keys {unknown}; a sweep file has '
                         f'{", ".join(SWEEP_KEYS)}')
    variants = data.get('variants')
    if not isinstance(variants, dict) or not variants:
        raise SweepError(f'{path}: "variants" must map each variant\'s name to a list of tokens '
                         f'(its config and/or KEY=VALUE options)')
    data.setdefault('name', osp.splitext(osp.basename(path))[0])
    return data


def variant_from_tokens(name, tokens, default_config: Optional[str]) -> Variant:
    """``tokens``: at most one config path, then ``KEY=VALUE`` options."""
    name = str(name)
    tokens = [] if tokens is None else tokens
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise SweepError(f'variant {name!r}: expected a list of strings (a config and/or '
                         f'KEY=VALUE options), got {tokens!r}')
    configs = [t for t in tokens if '=' not in t]
    if len(configs) > 1:
        raise SweepError(f'variant {name!r}: more than one config: {configs}; options need '
                         f'the form KEY=VALUE')
    config = configs[0] if configs else default_config
    if config is None:
        raise SweepError(f'variant {name!r} names no config and there is no default one: give '
                         f'its config or --config')
    return Variant(name, config, [t for t in tokens if '=' in t])


def sweep_from_args(args) -> Optional[Sweep]:
    """The sweep the command line describes; None for a bare ``--resume``."""
    file = load_sweep_file(args.sweep) if args.sweep else {}
    if file and (args.configs or args.variant):
        raise SweepError('give the variants in the sweep file or with --configs/--variant, '
                         'not both')
    default_config = args.config or file.get('config')
    variants = [variant_from_tokens(name, tokens, default_config)
                for name, tokens in file.get('variants', {}).items()]
    variants += [Variant(osp.splitext(osp.basename(c))[0], c) for c in args.configs or []]
    variants += [variant_from_tokens(tokens[0], tokens[1:], default_config)
                 for tokens in args.variant or []]
    if not variants:
        if args.resume and args.work_dir:
            return None
        raise SweepError('nothing to compare: give a sweep file, --configs, or --config with '
                         '--variant (see --help)')
    seeds = args.seeds or [seed_value(s) for s in file.get('seeds') or DEFAULT_SEEDS]
    options = list(file.get('options') or []) + list(args.cfg_options)
    name = file.get('name') or ('compare' if not args.configs else '_vs_'.join(
        v.name for v in variants))
    baseline = args.baseline or str(file.get('baseline') or variants[0].name)
    return Sweep(str(name), variants, baseline, seeds, options)


def parse_options(tokens: List[str], owner: str) -> dict:
    """``KEY=VALUE`` tokens as tools/train.py's ``--cfg-options`` (mmengine's DictAction)."""
    for token in tokens:
        if '=' not in token:
            raise SweepError(f'{owner}: option {token!r} is not of the form KEY=VALUE')
    if not tokens:
        return {}
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('--options', nargs='+', action=DictAction)
    try:
        return parser.parse_args(['--options', *tokens]).options
    except Exception as exc:  # DictAction asserts balanced brackets
        raise SweepError(f'{owner}: options {tokens} do not parse: {exc}') from None


def check_sweep(sweep: Sweep) -> Dict[str, tuple]:
    """Refuse a sweep that cannot run, before any run starts; returns each variant's loop size.

    Checks the names, seeds and baseline, that every config exists and loads with its options,
    that no option sets the seed (the sweep does), and that every variant's model builds.
    """
    names = [v.name for v in sweep.variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f'variant names must be unique, repeated: {duplicates}')
    slugs = [slug(n) for n in names]
    if len(set(slugs)) != len(slugs):
        raise SweepError(f'variant names {names} map to the same directory names {slugs}')
    if sweep.baseline not in names:
        raise SweepError(f'baseline {sweep.baseline!r} is not a variant; variants: {names}')
    if len(set(sweep.seeds)) != len(sweep.seeds):
        raise SweepError(f'seeds must be distinct, got {sweep.seeds}')
    parse_options(sweep.options, 'common --cfg-options')
    return {v.name: check_variant(v, sweep.options) for v in sweep.variants}


def check_variant(variant: Variant, common: List[str]) -> tuple:
    owner = f'variant {variant.name!r}'
    if not osp.isfile(variant.config):
        raise SweepError(f'{owner}: config {variant.config!r} not found (relative paths are '
                         f'taken from the current directory, {os.getcwd()})')
    options = parse_options(common + variant.options, owner)
    if sets_seed(options):
        raise SweepError(f'{owner}: remove randomness.seed from the options: every run gets '
                         f'its seed from --seeds')
    try:
        cfg = Config.fromfile(variant.config)
        cfg.merge_from_dict(options)
    except Exception as exc:
        raise SweepError(f'{owner}: config {variant.config!r} does not load with its options: '
                         f'{type(exc).__name__}: {exc}') from exc
    build_model(cfg, owner)
    loop = cfg.get('train_cfg') or {}
    if loop.get('type') == 'IterBasedTrainLoop':
        return ('iter', loop.get('max_iters'))
    return ('epoch', loop.get('max_epochs')) if loop.get('max_epochs') else None


def sets_seed(options: dict) -> bool:
    """Whether ``options`` (DictAction's, dotted keys) set ``randomness.seed``, however spelt."""
    probe = Config()
    probe.merge_from_dict(options)
    randomness = probe.get('randomness')
    return isinstance(randomness, dict) and 'seed' in randomness


def build_model(cfg: Config, owner: str) -> None:
    from mmengine.registry import DefaultScope

    from mmdet.registry import MODELS
    scope = DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet'))
    try:
        with scope:
            MODELS.build(cfg.model)
    except Exception as exc:
        raise SweepError(f'{owner}: the model does not build: {type(exc).__name__}: '
                         f'{exc}') from exc


def slug(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'variant'


# ------------------------------------------------------------------------------------------------
# Work dir: the sweep's definition, its lock, its runs


def sweep_to_dict(sweep: Sweep) -> dict:
    return asdict(sweep)


def sweep_from_dict(data: dict) -> Sweep:
    return Sweep(data['name'], [Variant(**v) for v in data['variants']], data['baseline'],
                 data['seeds'], data['options'])


def lock_work_dir(work_dir: str):
    """An exclusive lock on ``work_dir`` held while this process lives (two sweeps writing the
    same runs would corrupt them); the returned file must stay open."""
    os.makedirs(work_dir, exist_ok=True)
    lock = open(osp.join(work_dir, '.lock'), 'a+')
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SweepError(f'another compare.py is running in {work_dir}; wait for it or '
                         f'choose another --work-dir') from None
    return lock


def open_sweep(work_dir: str, sweep: Optional[Sweep], resume: bool) -> Sweep:
    """The sweep to run in ``work_dir``: the given one, or without one the saved one (--resume).

    A work dir holding a sweep is only reused with --resume; its runs are then checked against
    the new definition by :func:`plan_runs` (seeds and variants may be added).
    """
    saved_path = osp.join(work_dir, 'sweep.json')
    if osp.isfile(saved_path) and not resume:
        raise SweepError(f'{work_dir} holds a sweep already: add --resume to continue it (its '
                         f'finished runs are kept), or choose another --work-dir')
    if sweep is not None:
        return sweep
    if not osp.isfile(saved_path):
        raise SweepError(f'nothing to resume in {work_dir}: it has no sweep.json')
    return sweep_from_dict(read_json(saved_path))


def plan_runs(sweep: Sweep, work_dir: str, totals: Dict[str, tuple]) -> List[Run]:
    runs = []
    for variant in sweep.variants:
        for seed in sweep.seeds:
            options = sweep.options + variant.options + [f'randomness.seed={seed}']
            run = Run(variant.name, seed, variant.config, options,
                      osp.join(work_dir, 'runs', slug(variant.name), f'seed_{seed}'),
                      totals[variant.name])
            check_run_dir(run)
            runs.append(run)
    return runs


def check_run_dir(run: Run) -> None:
    """A run dir made by another definition (other config or options) is never reused."""
    path = run.path('run.json')
    if not osp.isfile(path):
        return
    with open(path) as f:
        before = json.load(f)
    if before != run.definition:
        raise SweepError(
            f'{run.dir} holds run {run.label} of another definition:\n  then: '
            f'{before["config"]} {before["options"]}\n  now:  {run.config} {run.options}\n'
            f'restore the sweep\'s definition or choose another --work-dir')


def write_json(path: str, data) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + '\n').encode())


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------
# Running


def die_with_parent() -> None:
    """In the child: SIGKILL when compare.py dies, so a killed sweep leaves no training behind
    that a resumed one would race with (Linux; elsewhere a no-op)."""
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_env(jobs: int) -> dict:
    env = dict(os.environ)
    if jobs > 1 and 'OMP_NUM_THREADS' not in env:
        env['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def next_command(run: Run) -> tuple:
    """(step, argv) of what ``run`` still has to do."""
    if osp.isfile(run.path('trained.json')):
        checkpoint = read_json(run.path('trained.json'))['checkpoint']
        return 'test', [sys.executable, osp.join(TOOLS, 'test.py'), run.config, checkpoint,
                        '--work-dir', run.path('test'), '--metrics-json',
                        run.path(osp.join('test', 'metrics.json')), '--cfg-options',
                        *run.options]
    argv = [sys.executable, osp.join(TOOLS, 'train.py'), run.config, '--work-dir', run.dir,
            '--cfg-options', *run.options]
    if osp.isfile(run.path('last_checkpoint')):
        argv.append('--resume')  # its latest checkpoint: tools/train.py continues exactly
    return 'train', argv


class Active:
    """A run's step in progress."""

    def __init__(self, run: Run, jobs: int):
        os.makedirs(run.dir, exist_ok=True)
        if not osp.isfile(run.path('run.json')):
            write_json(run.path('run.json'), run.definition)
        self.run = run
        self.step, argv = next_command(run)
        self.log_path = run.path(f'{self.step}.log')
        self.log = open(self.log_path, 'a')
        self.log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {" ".join(argv)}\n')
        self.log.flush()
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=child_env(jobs), preexec_fn=die_with_parent)

    def finish(self) -> Optional[str]:
        """After the process ended: record its outcome; a failure message or None."""
        self.log.close()
        code = self.process.returncode
        if code != 0:
            reason = f'signal {-code}' if code < 0 else f'exit code {code}'
            return (f'{self.run.label}: tools/{self.step}.py failed ({reason}); last lines of '
                    f'{self.log_path}:\n{log_tail(self.log_path)}')
        if self.step == 'train':
            with open(self.run.path('last_checkpoint')) as f:
                write_json(self.run.path('trained.json'), dict(checkpoint=f.read().strip()))
            return None
        return record_result(self.run)


def record_result(run: Run) -> Optional[str]:
    metrics = read_json(run.path(osp.join('test', 'metrics.json')))
    missing = [key for _, key in METRICS if key not in metrics]
    if missing:
        return (f'{run.label}: the test metrics have no {missing} (they have '
                f'{sorted(metrics)}); compare.py reads COCO box metrics (CocoMetric)')
    write_json(run.path('result.json'), dict(
        run.definition, checkpoint=read_json(run.path('trained.json'))['checkpoint'],
        metrics={label: metrics[key] for label, key in METRICS}))
    return None


def log_tail(path: str) -> str:
    with open(path, errors='replace') as f:
        lines = f.read().splitlines()[-LOG_TAIL_LINES:]
    return '\n'.join('    ' + line for line in lines)


def is_done(run: Run) -> bool:
    return osp.isfile(run.path('result.json'))


def execute(runs: List[Run], jobs: int, progress: 'Progress') -> List[str]:
    """Run what ``runs`` still need, ``jobs`` at a time; returns the failure messages."""
    pending = deque(run for run in runs if not is_done(run))
    active: List[Active] = []
    failures, failed = [], set()
    progress.show(active, failed, force=True)
    while pending or active:
        while pending and len(active) < jobs:
            active.append(Active(pending.popleft(), jobs))
            progress.show(active, failed, force=True)
        time.sleep(0.2)
        for step in [s for s in active if s.process.poll() is not None]:
            active.remove(step)
            failure = step.finish()
            if failure:
                failures.append(failure)
                failed.add(step.run.dir)
                print(f'[compare] FAILED: {failure}', flush=True)
            elif not is_done(step.run):
                active.append(Active(step.run, jobs))  # its test, in the slot it had
            progress.show(active, failed, force=True)
        progress.show(active, failed)
    return failures


class Progress:
    """Prints runs done / to do, what is running, and an ETA from this session's pace (the
    fraction of the sweep's training loops done per second, test time included)."""

    def __init__(self, runs: List[Run], every: float):
        self.runs, self.every = runs, every
        self.start = self.last = time.time()
        self.start_work = self.work(set())

    def work(self, failed: set) -> float:
        """Runs done, failed or trained count 1, a training run its fraction of the loop."""
        total = 0.0
        for run in self.runs:
            if is_done(run) or run.dir in failed or osp.isfile(run.path('trained.json')):
                total += 1.0
            elif run.total and run.total[1]:
                total += min(1.0, trained_steps(run) / run.total[1])
        return total

    def show(self, active: List[Active], failed: set, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        done = sum(is_done(run) for run in self.runs)
        work = self.work(failed)
        parts = [f'{done}/{len(self.runs)} runs done', f'{len(self.runs) - done} to do']
        if failed:
            parts.append(f'{len(failed)} failed')
        parts.append(f'elapsed {format_seconds(now - self.start)}')
        pace = (work - self.start_work) / max(now - self.start, 1e-9)
        if pace > 0 and work < len(self.runs):
            eta = (len(self.runs) - work) / pace
            finish = time.strftime('%H:%M', time.localtime(now + eta))
            parts.append(f'ETA {format_seconds(eta)} (~{finish})')
        line = '[compare] ' + ', '.join(parts)
        if active:
            line += '; running: ' + '; '.join(describe(step) for step in active)
        print(line, flush=True)


def trained_steps(run: Run) -> int:
    """Iterations (iteration-based loop) or epochs (epoch-based) a run has logged as done."""
    curve = read_curves(run.dir)['loss']
    if not curve or not run.total:
        return 0
    step, _, epoch = curve[-1]
    return step if run.total[0] == 'iter' else epoch - 1  # the logged epoch is under way


def describe(step: Active) -> str:
    run = step.run
    text = f'{run.variant} seed {run.seed} {step.step}'
    if step.step == 'train' and run.total and run.total[1]:
        text += f' {trained_steps(run)}/{run.total[1]} {run.total[0]}s'
    return text


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


# ------------------------------------------------------------------------------------------------
# Logs and report


def read_curves(run_dir: str) -> Dict[str, list]:
    """The training loss and the validation mAP of a run from mmengine's ``vis_data``.

    Each attempt (a resumed run writes a new timestamped dir) logs its own scalars.json; a step
    logged twice (by an attempt killed after its last checkpoint, then by the resumed one) keeps
    the later attempt's value. mmengine logs a validation at the epoch (0 in an iteration-based
    loop) unless the logger sets ``log_metric_by_epoch=False``: it is placed at the iteration of
    the training record before it, the iteration it ran after when the logger interval divides
    the validation interval (as in this project's configs).

    Returns:
        dict: ``loss``: [(iteration, loss, epoch)], ``val``: [(iteration, mAP)], sorted.
    """
    loss, val = {}, {}
    for path in sorted(glob.glob(osp.join(run_dir, '*', 'vis_data', 'scalars.json'))):
        last_train_step = None
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed attempt
                    continue
                if LOSS_KEY in record:
                    last_train_step = record['step']
                    loss[last_train_step] = (last_train_step, record[LOSS_KEY],
                                             record.get('epoch', 0))
                if METRICS[0][1] in record:
                    step = record['step'] if last_train_step is None else last_train_step
                    val[step] = (step, record[METRICS[0][1]])
    return dict(loss=[loss[s] for s in sorted(loss)], val=[val[s] for s in sorted(val)])


def build_report(sweep: Sweep, runs: List[Run], failures: List[str], confidence: float,
                 resamples: int) -> dict:
    results = {run.dir: read_json(run.path('result.json')) for run in runs if is_done(run)}
    per_variant = {}
    for variant in sweep.variants:
        finished = [results[r.dir] for r in runs if r.variant == variant.name and r.dir in results]
        per_variant[variant.name] = {r['seed']: r['metrics'] for r in finished}
    base = per_variant[sweep.baseline]
    variants = []
    for variant in sweep.variants:
        by_seed = per_variant[variant.name]
        entry = dict(name=variant.name, config=variant.config, options=variant.options,
                     baseline=variant.name == sweep.baseline,
                     runs=[dict(seed=s, metrics=by_seed[s]) for s in sorted(by_seed)],
                     summary={}, difference={})
        for label, _ in METRICS:
            entry['summary'][label] = summarize([by_seed[s][label] for s in sorted(by_seed)])
            if variant.name != sweep.baseline:
                entry['difference'][label] = paired_difference(
                    {s: m[label] for s, m in base.items()},
                    {s: m[label] for s, m in by_seed.items()}, confidence, resamples)
        variants.append(entry)
    return dict(sweep=sweep_to_dict(sweep), confidence=confidence, bootstrap_resamples=resamples,
                metrics=dict(METRICS), variants=variants, failures=failures,
                runs_planned=len(runs), runs_finished=len(results))


def signed(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:+.3f}'


def mean_std(summary: dict) -> str:
    if summary['mean'] is None:
        return '-'
    return f'{summary["mean"]:.3f}' + ('' if summary['std'] is None else
                                       f' ± {summary["std"]:.3f}')


def difference_cell(diff: Optional[dict]) -> str:
    if diff is None:
        return 'no paired run'
    if diff['ci_low'] is None:
        return f'{signed(diff["mean"])} (1 pair: no interval)'
    return f'{signed(diff["mean"])} [{signed(diff["ci_low"])}, {signed(diff["ci_high"])}]'


def format_tables(report: dict) -> str:
    """Markdown: per-variant summaries, then paired differences to the baseline."""
    seeds = report['sweep']['seeds']
    labels = [label for label, _ in METRICS]
    lines = ['| variant | runs | ' + ' | '.join(f'{label} mean ± std' for label in labels) +
             ' | mAP per seed (' + ', '.join(map(str, seeds)) + ') |',
             '|---|---|' + '---|' * (len(labels) + 1)]
    for v in report['variants']:
        by_seed = {r['seed']: r['metrics']['mAP'] for r in v['runs']}
        per_seed = ', '.join(f'{by_seed[s]:.3f}' if s in by_seed else '-' for s in seeds)
        name = v['name'] + (' (baseline)' if v['baseline'] else '')
        lines.append(f'| {name} | {len(v["runs"])}/{len(seeds)} | ' +
                     ' | '.join(mean_std(v['summary'][label]) for label in labels) +
                     f' | {per_seed} |')
    level = f'{100 * report["confidence"]:g}%'
    baseline = report['sweep']['baseline']
    lines += ['', f'| variant - {baseline} (paired by seed) | pairs | ' +
              ' | '.join(f'Δ {label} [{level} CI]' for label in labels) + ' |',
              '|---|---|' + '---|' * len(labels)]
    for v in report['variants']:
        if v['baseline']:
            continue
        diffs = [v['difference'][label] for label in labels]
        pairs = diffs[0]['n'] if diffs[0] else 0
        lines.append(f'| {v["name"]} | {pairs} | ' +
                     ' | '.join(difference_cell(d) for d in diffs) + ' |')
    return '\n'.join(lines)


def csv_bytes(rows: List[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ['variant'])
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def run_rows(report: dict) -> List[dict]:
    return [dict(variant=v['name'], seed=r['seed'], **r['metrics'])
            for v in report['variants'] for r in v['runs']]


def summary_rows(report: dict) -> List[dict]:
    rows = []
    for v in report['variants']:
        row = dict(variant=v['name'], baseline=v['baseline'], runs=len(v['runs']))
        for label, _ in METRICS:
            row.update({f'{label} mean': v['summary'][label]['mean'],
                        f'{label} std': v['summary'][label]['std']})
            diff = v['difference'].get(label)
            for key in ('mean', 'ci_low', 'ci_high'):
                row[f'{label} diff {key}'] = diff[key] if diff else None
        rows.append(row)
    return rows


def write_outputs(work_dir: str, report: dict, runs: List[Run]) -> List[str]:
    from cbam_mmdet.runtime.sweep_plots import learning_curves_png, metrics_png
    curves = {}
    for run in runs:
        curves.setdefault(run.variant, {})[run.seed] = read_curves(run.dir)
    outputs = {
        'results.json': (json.dumps(report, indent=2) + '\n').encode(),
        'runs.csv': csv_bytes(run_rows(report)),
        'summary.csv': csv_bytes(summary_rows(report)),
        'metrics.png': metrics_png(report),
        'learning_curves.png': learning_curves_png(curves, [v['name'] for v in
                                                            report['variants']]),
    }
    for name, data in outputs.items():
        write_atomic(osp.join(work_dir, name), data)
    return [osp.join(work_dir, name) for name in outputs]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sweep = sweep_from_args(args)
        work_dir = args.work_dir or osp.join('work_dirs', 'compare', slug(sweep.name))
        sweep = open_sweep(work_dir, sweep, args.resume)
        print(f'[compare] checking {len(sweep.variants)} variants', flush=True)
        runs = plan_runs(sweep, work_dir, check_sweep(sweep))
        lock = lock_work_dir(work_dir)
        write_json(osp.join(work_dir, 'sweep.json'), sweep_to_dict(sweep))
    except SweepError as exc:
        print(f'compare.py: error: {exc}', file=sys.stderr)
        return 2
    print(f'[compare] {len(sweep.variants)} variants x {len(sweep.seeds)} seeds in {work_dir}; '
          f'logs: {work_dir}/runs/<variant>/seed_<seed>/{{train,test}}.log', flush=True)
    try:
        failures = execute(runs, args.jobs, Progress(runs, args.progress_every))
    except KeyboardInterrupt:
        print(f'\n[compare] interrupted; continue with the same command and --resume '
              f'(--work-dir {work_dir})', file=sys.stderr)
        return 130
    report = build_report(sweep, runs, failures, args.confidence, args.resamples)
    print('\n' + format_tables(report))
    for path in write_outputs(work_dir, report, runs):
        print(f'[compare] wrote {path}')
    lock.close()
    if failures:
        print(f'\n[compare] {len(failures)} run(s) failed (the others are in the report); fix '
              f'the cause and add --resume to run them again:', file=sys.stderr)
        for failure in failures:
            print(f'  {failure}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
