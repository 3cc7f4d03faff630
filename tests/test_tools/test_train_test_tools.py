"""tools/train.py, tools/test.py, tools/dist_train.sh and tools/run_demo.py on synthetic COCO."""
import json
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import DEMO_CONFIG, REPO_ROOT, TOOLS, data_options, load_tool, run


@pytest.fixture(scope='module')
def trained(synthetic, tmp_path_factory):
    """An uninterrupted 4-iteration run, validated with CocoMetric at the end."""
    work_dir = str(tmp_path_factory.mktemp('train'))
    run([sys.executable, osp.join(TOOLS, 'train.py'), DEMO_CONFIG, '--work-dir', work_dir] +
        data_options(synthetic, 4))
    return work_dir


def load_state(path):
    return torch.load(path, map_location='cpu')  # weights_only, thanks to cbam_mmdet


def test_train_writes_checkpoints_and_validates(trained):
    assert osp.isfile(osp.join(trained, 'iter_2.pth')) and osp.isfile(
        osp.join(trained, 'iter_4.pth'))
    scalars = [json.loads(line) for line in open(
        glob_one(trained, 'vis_data/scalars.json'))]
    val = [s for s in scalars if 'coco/bbox_mAP' in s]
    assert len(val) == 1 and 0.0 <= val[0]['coco/bbox_mAP'] <= 1.0
    assert [s['iter'] for s in scalars if 'loss' in s] == [1, 2, 3, 4]


def glob_one(work_dir, suffix):
    import glob
    found = glob.glob(osp.join(work_dir, '*', suffix))
    assert len(found) == 1, found
    return found[0]


def test_resume_continues_exactly(trained, synthetic, tmp_path):
    """Resumed from iteration 2, the run ends at iteration 4 with the uninterrupted weights.

    Neither run sets a seed: tools/train.py resumes with the seed the checkpoint recorded."""
    run([sys.executable, osp.join(TOOLS, 'train.py'), DEMO_CONFIG, '--work-dir',
         str(tmp_path), '--resume', osp.join(trained, 'iter_2.pth')] +
        data_options(synthetic, 4))
    resumed, uninterrupted = (load_state(osp.join(d, 'iter_4.pth'))
                              for d in (str(tmp_path), trained))
    assert resumed['meta']['iter'] == uninterrupted['meta']['iter'] == 4
    assert resumed['state_dict'].keys() == uninterrupted['state_dict'].keys()
    for key, value in uninterrupted['state_dict'].items():
        assert torch.equal(resumed['state_dict'][key], value), key


def test_sigkill_after_a_checkpoint_then_resume_matches_the_uninterrupted_run(
        trained, synthetic, tmp_path):
    seed = load_state(osp.join(trained, 'iter_2.pth'))['meta']['seed']  # the same run again
    args = [sys.executable, osp.join(TOOLS, 'train.py'), DEMO_CONFIG, '--work-dir',
            str(tmp_path)] + data_options(synthetic, 4, seed)
    training = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    pointer, deadline = tmp_path / 'last_checkpoint', time.time() + 300
    while not (pointer.exists() and pointer.read_text().strip().endswith('iter_2.pth')):
        assert training.poll() is None and time.time() < deadline
        time.sleep(0.02)
    training.send_signal(signal.SIGKILL)
    assert training.wait() == -signal.SIGKILL
    run(args + ['--resume'])  # the latest checkpoint of the work dir
    resumed, uninterrupted = (load_state(osp.join(d, 'iter_4.pth'))
                              for d in (str(tmp_path), trained))
    for key, value in uninterrupted['state_dict'].items():
        assert torch.equal(resumed['state_dict'][key], value), key


def test_test_tool_evaluates_and_dumps(trained, synthetic, tmp_path):
    metrics_file, out = tmp_path / 'metrics.json', tmp_path / 'results.pkl'
    options = data_options(synthetic, 4)
    run([sys.executable, osp.join(TOOLS, 'test.py'), DEMO_CONFIG,
         osp.join(trained, 'iter_4.pth'), '--work-dir', str(tmp_path), '--out', str(out),
         '--metrics-json', str(metrics_file)] + options)
    metrics = json.loads(metrics_file.read_text())
    assert {'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'} <= set(metrics)
    assert out.exists()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_distributed_training(synthetic, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), OMP_NUM_THREADS='1')
    run(['bash', osp.join(TOOLS, 'dist_train.sh'), DEMO_CONFIG, '2', '--work-dir',
         str(tmp_path)] + data_options(synthetic, 2), env=env)
    log = open(glob_one(str(tmp_path), '*.log')).read()
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    assert load_state(osp.join(tmp_path, 'iter_2.pth'))['meta']['iter'] == 2


def test_demo_prints_the_comparison_table(synthetic, tmp_path):
    result = run([sys.executable, osp.join(TOOLS, 'run_demo.py'), '--data-dir', synthetic,
                  '--work-dir', str(tmp_path), '--max-iters', '2'])
    table = result.stdout[result.stdout.index('| model |'):]
    assert 'Faster R-CNN R18-FPN' in table and 'Faster R-CNN R18-CBAM-FPN' in table
    rows = json.loads((tmp_path / 'results.json').read_text())
    assert [r['model'] for r in rows] == ['Faster R-CNN R18-FPN', 'Faster R-CNN R18-CBAM-FPN']
    assert rows[1]['params'] > rows[0]['params']


def test_amp_without_a_gpu_is_refused_with_the_reason():
    train = load_tool('train')
    args = train.parse_args([DEMO_CONFIG, '--amp'])
    if torch.cuda.is_available():
        assert train.build_config(args).optim_wrapper.type == 'AmpOptimWrapper'
    else:
        with pytest.raises(ValueError, match='--amp needs a GPU'):
            train.build_config(args)


def test_demo_refuses_a_non_positive_iteration_count(capsys):
    demo = load_tool('run_demo')
    with pytest.raises(SystemExit):
        demo.parse_args(['--max-iters', '0'])
    assert '--max-iters: must be >= 1, got 0' in capsys.readouterr().err
