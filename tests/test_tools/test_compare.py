"""tools/analysis/compare.py: a 2 variants x 2 seeds sweep on the synthetic data, killed with
SIGKILL in the middle of a run and resumed; its report; a failing run; the refusals."""
import csv
import glob
import importlib.util
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from conftest import DEMO_CONFIG, REPO_ROOT, TOOLS, data_options, run

COMPARE = osp.join(TOOLS, 'analysis', 'compare.py')
PLAIN_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'faster-rcnn_r18_fpn_200i_synthetic.py')
SWEEPS = sorted(glob.glob(osp.join(REPO_ROOT, 'configs', 'demo', 'sweeps', '*.yaml')))
CHANNEL_ONLY = ['model.backbone.cbam_cfg.type=CBAM', 'model.backbone.cbam_cfg.arrangement=channel']
# One torch thread per tool: on a 2-core machine shared with other processes, two OpenMP threads
# per process make a training step several times slower.
ENV = dict(os.environ, OMP_NUM_THREADS='1')


def load_compare():
    spec = importlib.util.spec_from_file_location('compare_tool', COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = load_compare()


def tiny_options(synthetic):
    """conftest's 2-iteration data options (the sweep sets the seed) with a checkpoint and a
    validation after each iteration, on 64 px images."""
    return ([o for o in data_options(synthetic, 2)[1:] if not o.startswith('randomness.')] +
            ['train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
             'train_dataloader.dataset.pipeline.2.scale=(64,64)',
             'val_dataloader.dataset.pipeline.1.scale=(64,64)',
             'test_dataloader.dataset.pipeline.1.scale=(64,64)'])


def sweep_command(synthetic, work_dir, *extra):
    return [sys.executable, COMPARE, '--config', DEMO_CONFIG, '--variant', 'plain', PLAIN_CONFIG,
            '--variant', 'channel', *CHANNEL_ONLY, '--seeds', '0', '1', '--work-dir',
            str(work_dir), '--progress-every', '2', *extra, '--cfg-options',
            *tiny_options(synthetic)]


def attempts(log_path):
    """The command lines compare.py logged before each start of a tool."""
    with open(log_path) as f:
        return [line for line in f if line.startswith('=== ')]


def processes_mentioning(text):
    found = []
    for cmdline in glob.glob('/proc/[0-9]*/cmdline'):
        try:
            with open(cmdline, 'rb') as f:
                if text.encode() in f.read():
                    found.append(cmdline)
        except OSError:
            continue
    return found


def run_dir(work_dir, variant, seed):
    return osp.join(str(work_dir), 'runs', variant, f'seed_{seed}')


@pytest.fixture(scope='module')
def resumed(synthetic, tmp_path_factory):
    """The sweep killed with SIGKILL once its first run is finished and its second one has saved
    the checkpoint of iteration 1 (of 2), then continued with --resume."""
    work_dir = tmp_path_factory.mktemp('compare')
    command = sweep_command(synthetic, work_dir)
    first, second = run_dir(work_dir, 'plain', 0), run_dir(work_dir, 'plain', 1)
    sweep = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
    pointer, deadline = osp.join(second, 'last_checkpoint'), time.time() + 900
    while not (osp.isfile(osp.join(first, 'result.json')) and osp.isfile(pointer)
               and open(pointer).read().strip().endswith('iter_1.pth')):
        assert sweep.poll() is None and time.time() < deadline
        time.sleep(0.02)
    sweep.send_signal(signal.SIGKILL)
    assert sweep.wait() == -signal.SIGKILL
    deadline = time.time() + 30
    while processes_mentioning(str(work_dir)):  # its tools die with it
        assert time.time() < deadline, 'a tool outlived the killed sweep'
        time.sleep(0.1)
    killed = dict(first_result=os.stat(osp.join(first, 'result.json')).st_mtime_ns,
                  second_train_attempts=len(attempts(osp.join(second, 'train.log'))))
    output = run(command + ['--resume'], timeout=900, env=ENV).stdout
    return SimpleNamespace(work_dir=str(work_dir), killed=killed, output=output,
                           command=command)


def test_resume_redoes_no_finished_run(resumed):
    first = run_dir(resumed.work_dir, 'plain', 0)
    assert os.stat(osp.join(first, 'result.json')).st_mtime_ns == resumed.killed['first_result']
    assert len(attempts(osp.join(first, 'train.log'))) == 1
    assert len(attempts(osp.join(first, 'test.log'))) == 1
    for variant, seed in (('channel', 0), ('channel', 1)):
        assert len(attempts(osp.join(run_dir(resumed.work_dir, variant, seed), 'train.log'))) == 1


def test_interrupted_run_continues_from_its_checkpoint(resumed):
    second = run_dir(resumed.work_dir, 'plain', 1)
    train_attempts = attempts(osp.join(second, 'train.log'))
    assert resumed.killed['second_train_attempts'] == 1
    assert len(train_attempts) == 2 and train_attempts[1].rstrip().endswith('--resume')
    logs = sorted(glob.glob(osp.join(second, '*', 'vis_data', 'scalars.json')))
    assert len(logs) == 2
    resumed_steps = [json.loads(line)['step'] for line in open(logs[1])
                     if '"loss"' in line]
    assert resumed_steps == [2]
    curves = compare.read_curves(second)
    assert [p[0] for p in curves['loss']] == [1, 2]
    # Killed (almost always) in the validation that follows the checkpoint of iteration 1: that
    # one is then lost, as in any mmengine resume.
    assert [p[0] for p in curves['val']] in ([2], [1, 2])
    first = compare.read_curves(run_dir(resumed.work_dir, 'plain', 0))
    assert [p[0] for p in first['val']] == [1, 2]


def test_report_matches_the_runs(resumed):
    with open(osp.join(resumed.work_dir, 'results.json')) as f:
        report = json.load(f)
    assert report['runs_finished'] == report['runs_planned'] == 4 and report['failures'] == []
    plain, channel = report['variants']
    assert plain['baseline'] and not channel['baseline']
    results = {(v, s): json.load(open(osp.join(run_dir(resumed.work_dir, v, s),
                                               'result.json')))['metrics']
               for v in ('plain', 'channel') for s in (0, 1)}
    for variant in (plain, channel):
        assert [r['seed'] for r in variant['runs']] == [0, 1]
        for r in variant['runs']:
            assert r['metrics'] == results[variant['name'], r['seed']]
    differences = [results['channel', s]['mAP'] - results['plain', s]['mAP'] for s in (0, 1)]
    diff = channel['difference']['mAP']
    assert diff['differences'] == pytest.approx(differences)
    assert diff['mean'] == pytest.approx(sum(differences) / 2)
    # Two pairs: resample means of [a, b] are a, (a + b) / 2, b, each end with probability 1/4.
    assert (diff['ci_low'], diff['ci_high']) == pytest.approx(
        (min(differences), max(differences)))
    mean = channel['summary']['mAP']['mean']
    assert mean == pytest.approx((results['channel', 0]['mAP'] + results['channel', 1]['mAP']) / 2)
    assert f'| channel | 2/2 | {mean:.3f} ± ' in resumed.output
    assert '| plain (baseline) | 2/2 |' in resumed.output


def test_csv_and_png_outputs(resumed):
    with open(osp.join(resumed.work_dir, 'runs.csv')) as f:
        rows = list(csv.DictReader(f))
    assert [(r['variant'], r['seed']) for r in rows] == [
        ('plain', '0'), ('plain', '1'), ('channel', '0'), ('channel', '1')]
    assert set(rows[0]) == {'variant', 'seed', 'mAP', 'mAP@.5', 'mAP@.75'}
    with open(osp.join(resumed.work_dir, 'summary.csv')) as f:
        summary = list(csv.DictReader(f))
    assert [r['variant'] for r in summary] == ['plain', 'channel']
    assert summary[0]['mAP diff mean'] == '' and summary[1]['mAP diff mean'] != ''
    for name in ('metrics.png', 'learning_curves.png'):
        with Image.open(osp.join(resumed.work_dir, name)) as image:
            assert image.format == 'PNG' and image.width > 600 and image.height > 300


def test_resume_of_a_finished_sweep_only_reports(resumed):
    output = run(resumed.command + ['--resume'], env=ENV).stdout
    assert '4/4 runs done' in output and 'running:' not in output
    assert len(attempts(osp.join(run_dir(resumed.work_dir, 'plain', 1), 'train.log'))) == 2


def test_a_sweep_dir_is_not_reused_without_resume(resumed):
    result = subprocess.run(resumed.command, cwd=REPO_ROOT, capture_output=True, text=True,
                            env=ENV)
    assert result.returncode == 2
    assert 'holds a sweep already: add --resume' in result.stderr


def test_resume_refuses_a_changed_variant(resumed):
    command = [t if t != 'model.backbone.cbam_cfg.arrangement=channel'
               else 'model.backbone.cbam_cfg.arrangement=spatial' for t in resumed.command]
    result = subprocess.run(command + ['--resume'], cwd=REPO_ROOT, capture_output=True,
                            text=True, env=ENV)
    assert result.returncode == 2
    assert "holds run 'channel' seed 0 of another definition" in result.stderr


def test_a_failed_run_is_reported_and_the_others_kept(synthetic, tmp_path):
    command = [sys.executable, COMPARE, '--variant', 'plain', PLAIN_CONFIG,
               '--variant', 'broken', PLAIN_CONFIG,
               f'train_dataloader.dataset.data_root={tmp_path}/missing/', '--seeds', '0',
               '--jobs', '2', '--work-dir', str(tmp_path / 'sweep'), '--cfg-options',
               *tiny_options(synthetic)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=900, env=ENV)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "'broken' seed 0: tools/train.py failed (exit code 1)" in result.stderr
    assert 'missing' in result.stderr  # the tail of its log names the problem
    with open(tmp_path / 'sweep' / 'results.json') as f:
        report = json.load(f)
    plain, broken = report['variants']
    assert len(plain['runs']) == 1 and broken['runs'] == []
    assert broken['difference']['mAP'] is None and len(report['failures']) == 1
    assert '| broken | 0 | no paired run |' in result.stdout


@pytest.mark.parametrize('sweep', SWEEPS, ids=osp.basename)
def test_shipped_sweeps_build(sweep, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    definition = compare.sweep_from_args(compare.parse_args([sweep]))
    totals = compare.check_sweep(definition)
    assert definition.baseline == definition.variants[0].name
    assert set(totals.values()) == {('iter', 200)}


@pytest.mark.parametrize('argv, message', [
    (['--configs', 'configs/demo/nope.py'], "config 'configs/demo/nope.py' not found"),
    (['--config', DEMO_CONFIG, '--variant', 'k4', 'model.backbone.cbam_cfg.type=CBAM',
      'model.backbone.cbam_cfg.kernel_size=4'],
     "variant 'k4': the model does not build: ValueError: CBAM: kernel_size must be a positive "
     "odd int"),
    (['--configs', PLAIN_CONFIG, '--cfg-options', 'randomness.seed=3'],
     'remove randomness.seed from the options'),
    (['--configs', PLAIN_CONFIG, DEMO_CONFIG, '--baseline', 'R18'],
     "baseline 'R18' is not a variant"),
    (['--configs', PLAIN_CONFIG, '--seeds', '1', '1'], 'seeds must be distinct'),
    (['--config', DEMO_CONFIG, '--variant', 'a', 'model.backbone.cbam_cfg.pool_types=(avg,max'],
     "variant 'a': options"),
    (['--resume'], 'nothing to resume in'),
    ([], 'nothing to compare'),
])
def test_bad_input_is_refused(argv, message, tmp_path, capsys):
    assert compare.main(argv + ['--work-dir', str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_non_integer_seeds_are_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        compare.parse_args(['--configs', PLAIN_CONFIG, '--seeds', '0', 'one'])
    assert "seeds must be integers, got 'one'" in capsys.readouterr().err
    sweep = tmp_path / 'sweep.yaml'
    sweep.write_text(f'seeds: [0, 1.5]\nvariants:\n  plain: [{PLAIN_CONFIG}]\n')
    assert compare.main([str(sweep), '--work-dir', str(tmp_path / 'w')]) == 2
    assert 'seeds must be integers, got 1.5' in capsys.readouterr().err


def test_sweep_file_errors_name_the_problem(tmp_path, capsys):
    sweep = tmp_path / 'sweep.yaml'
    sweep.write_text('variant:\n  plain: []\n')
    assert compare.main([str(sweep)]) == 2
    assert "unknown keys ['variant']" in capsys.readouterr().err
    assert compare.main([str(tmp_path / 'absent.yaml')]) == 2
    assert 'absent.yaml' in capsys.readouterr().err


def test_a_second_sweep_in_a_running_sweeps_dir_is_refused(tmp_path, capsys):
    lock = compare.lock_work_dir(str(tmp_path))  # as a running compare.py holds it
    try:
        assert compare.main(['--configs', PLAIN_CONFIG, '--work-dir', str(tmp_path)]) == 2
    finally:
        lock.close()
    assert 'another compare.py is running in' in capsys.readouterr().err
    assert not (tmp_path / 'sweep.json').exists()
