"""tools/slurm_train.sh and tools/slurm_test.sh: the srun command they build, with a stub srun."""
import os
import os.path as osp
import subprocess

import pytest

from conftest import REPO_ROOT, TOOLS

# Prints each argument it gets on a line of its own, so the test sees the exact argument list.
STUB_SRUN = '#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n'


@pytest.fixture
def srun_env(tmp_path):
    stub_dir = tmp_path / 'bin'
    stub_dir.mkdir()
    (stub_dir / 'srun').write_text(STUB_SRUN)
    (stub_dir / 'srun').chmod(0o755)
    env = {key: value for key, value in os.environ.items()
           if key not in ('GPUS', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'SRUN_ARGS', 'PYTHON')}
    env['PATH'] = f'{stub_dir}{os.pathsep}{env["PATH"]}'
    env['PYTHONPATH'] = '/already/set'
    return env


def slurm(script, args, env, **extra_env):
    return subprocess.run([osp.join(TOOLS, script), *args], capture_output=True, text=True,
                          env=dict(env, **extra_env), timeout=60)


def srun_args(result):
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_slurm_train_defaults(srun_env):
    args = srun_args(slurm('slurm_train.sh', ['gpu', 'cbam r50', 'configs/a b.py', 'work dir'],
                           srun_env))
    assert args == ['-p', 'gpu', '--job-name=cbam r50', '--gres=gpu:8', '--ntasks=8',
                    '--ntasks-per-node=8', '--cpus-per-task=5', '--kill-on-bad-exit=1', 'python',
                    '-u', osp.join(TOOLS, 'train.py'), 'configs/a b.py', '--work-dir=work dir',
                    '--launcher=slurm']


def test_slurm_train_sizes_options_and_tool_arguments(srun_env):
    result = slurm('slurm_train.sh', ['p', 'j', 'c.py', 'w', '--cfg-options', 'a=1 b', '--amp'],
                   srun_env, GPUS='16', CPUS_PER_TASK='4', SRUN_ARGS='--qos=high  -x node1',
                   PYTHON='/opt/python')
    args = srun_args(result)
    assert args[2:11] == ['--job-name=j', '--gres=gpu:8', '--ntasks=16', '--ntasks-per-node=8',
                          '--cpus-per-task=4', '--kill-on-bad-exit=1', '--qos=high', '-x',
                          'node1']
    assert args[11:] == ['/opt/python', '-u', osp.join(TOOLS, 'train.py'), 'c.py',
                         '--work-dir=w', '--launcher=slurm', '--cfg-options', 'a=1 b', '--amp']


def test_a_job_smaller_than_a_node_asks_for_its_gpus_only(srun_env):
    args = srun_args(slurm('slurm_train.sh', ['p', 'j', 'c.py', 'w'], srun_env, GPUS='2'))
    assert '--gres=gpu:2' in args and '--ntasks=2' in args and '--ntasks-per-node=2' in args


def test_slurm_test_passes_checkpoint_and_options(srun_env):
    args = srun_args(slurm('slurm_test.sh', ['p', 'j', 'c.py', 'ckpt.pth', '--out', 'r.pkl'],
                           srun_env, GPUS_PER_NODE='4'))
    assert '--gres=gpu:4' in args and '--ntasks-per-node=4' in args and '--ntasks=8' in args
    tool = args.index(osp.join(TOOLS, 'test.py'))
    assert args[tool + 1:] == ['c.py', 'ckpt.pth', '--launcher=slurm', '--out', 'r.pkl']


def test_source_checkout_is_put_on_the_python_path(srun_env, tmp_path):
    # srun passes the environment on to the tasks: the stub prints what the tasks would get.
    (tmp_path / 'bin' / 'srun').write_text('#!/bin/sh\nprintf "%s\\n" "$PYTHONPATH"\n')
    result = slurm('slurm_test.sh', ['p', 'j', 'c.py', 'k.pth'], srun_env)
    assert result.stdout.strip() == f'{REPO_ROOT}:/already/set'


@pytest.mark.parametrize('script, args', [('slurm_train.sh', ['p', 'j', 'c.py']),
                                          ('slurm_test.sh', ['p', 'j', 'c.py']),
                                          ('slurm_train.sh', [])])
def test_missing_arguments_print_usage(srun_env, script, args):
    result = slurm(script, args, srun_env)
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.startswith('usage:') and 'PARTITION JOB_NAME CONFIG' in result.stderr


@pytest.mark.parametrize('variable, value', [('GPUS', '0'), ('GPUS', 'eight'),
                                             ('GPUS_PER_NODE', '-1'), ('CPUS_PER_TASK', '2x')])
def test_bad_sizes_are_refused_before_srun(srun_env, variable, value):
    result = slurm('slurm_train.sh', ['p', 'j', 'c.py', 'w'], srun_env, **{variable: value})
    assert result.returncode == 2 and result.stdout == ''
    assert f"{variable} must be a positive integer, got '{value}'" in result.stderr


def test_installed_copy_keeps_the_python_path(srun_env, tmp_path):
    # As in cbam_mmdet/.mim/tools of a wheel: no package beside the tools folder.
    tools = tmp_path / 'mim' / 'tools'
    tools.mkdir(parents=True)
    for name in ('slurm_test.sh', 'slurm_common.sh'):
        (tools / name).write_text(open(osp.join(TOOLS, name)).read())
    (tools / 'slurm_test.sh').chmod(0o755)
    (tmp_path / 'bin' / 'srun').write_text('#!/bin/sh\nprintf "%s\\n" "$PYTHONPATH"\n')
    result = subprocess.run([str(tools / 'slurm_test.sh'), 'p', 'j', 'c.py', 'k.pth'],
                            capture_output=True, text=True, env=srun_env, timeout=60)
    assert result.stdout.strip() == '/already/set'
