"""The wheel ships the configs and tools in cbam_mmdet/.mim/; installed without dependencies into a
fresh virtual environment over the pinned stack, `mim train` / `mim test` run a config of another
project that inherits one of ours."""
import glob
import os
import os.path as osp
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile

import pytest

from conftest import REPO_ROOT, data_options

MIM_FOLDERS = ('configs', 'tools')
# What a copy of the source tree leaves out: the environment, build outputs, local data.
NOT_SOURCE = shutil.ignore_patterns('.venv', '.git', 'build', 'dist', '*.egg-info', '__pycache__',
                                    '*.pyc', 'work_dirs', 'data', 'checkpoints', '.pytest_cache',
                                    '.hypothesis')
INHERITED = 'demo/faster-rcnn_r18-cbam_fpn_200i_synthetic.py'
USER_CONFIG = """_base_ = '{{$CBAM_MMDET_CONFIGS:}}/%s'
# A change of the user's own, so the run is not simply our config.
model = dict(rpn_head=dict(feat_channels=64))
""" % INHERITED


def run_ok(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, (' '.join(map(str, args)) + '\n' + result.stdout[-3000:] +
                                    result.stderr[-3000:])
    return result


def source_files(folder):
    """The files of a source folder, relative to the repository root."""
    return {osp.relpath(path, REPO_ROOT) for path in glob.glob(
        osp.join(REPO_ROOT, folder, '**', '*'), recursive=True)
        if osp.isfile(path) and '__pycache__' not in path}


@pytest.fixture(scope='module')
def source_copy(tmp_path_factory):
    """The source tree copied (links kept as links), so building leaves the checkout clean."""
    src = tmp_path_factory.mktemp('src') / 'cbam_mmdet_src'
    shutil.copytree(REPO_ROOT, src, symlinks=True, ignore=NOT_SOURCE)
    return src


def pip(*args):
    return run_ok([sys.executable, '-m', 'pip', '--disable-pip-version-check', *args])


@pytest.fixture(scope='module')
def wheel(source_copy, tmp_path_factory):
    dist = tmp_path_factory.mktemp('dist')
    pip('wheel', '--no-deps', '--no-build-isolation', '-w', str(dist), str(source_copy))
    (path, ) = glob.glob(str(dist / 'cbam_mmdet-*.whl'))
    return path


def test_wheel_ships_every_config_and_tool(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        links = [info.filename for info in archive.infolist() if (info.external_attr >> 28) == 0xA]
    shipped = {name[len('cbam_mmdet/.mim/'):] for name in names
               if name.startswith('cbam_mmdet/.mim/')}
    expected = set().union(*(source_files(folder) for folder in MIM_FOLDERS))
    assert expected and expected <= shipped
    assert 'model-index.yml' in shipped and 'tools/train.py' in shipped
    assert 'cbam_mmdet/models/layers/cbam/csrc/cbam_cpu.cpp' in names
    assert not links and not [name for name in names if '__pycache__' in name]


def test_sdist_builds_the_same_wheel(source_copy, tmp_path):
    """What `python -m build` does: an sdist, then a wheel built from the unpacked sdist."""
    hooks = 'from setuptools import build_meta as b; import sys; print(b.{}(sys.argv[1]))'
    sdist = run_ok([sys.executable, '-c', hooks.format('build_sdist'), str(tmp_path)],
                   cwd=source_copy).stdout.split()[-1]
    with tarfile.open(tmp_path / sdist) as archive:
        archive.extractall(tmp_path, filter='data')
    unpacked = tmp_path / sdist[:-len('.tar.gz')]
    assert not (unpacked / 'cbam_mmdet' / '.mim').exists()  # no links in the sdist
    wheel = run_ok([sys.executable, '-c', hooks.format('build_wheel'), str(tmp_path)],
                   cwd=unpacked).stdout.split()[-1]
    with zipfile.ZipFile(tmp_path / wheel) as archive:
        names = set(archive.namelist())
    expected = set().union(*(source_files(folder) for folder in MIM_FOLDERS))
    assert {f'cbam_mmdet/.mim/{name}' for name in expected} <= names


def test_source_tree_links_configs_and_tools():
    mim_dir = osp.join(REPO_ROOT, 'cbam_mmdet', '.mim')
    for name in MIM_FOLDERS + ('model-index.yml', ):
        assert osp.islink(osp.join(mim_dir, name))
        assert osp.samefile(osp.join(mim_dir, name), osp.join(REPO_ROOT, name))


def fresh_venv(path):
    """A virtual environment of the base interpreter that sees the pinned stack of this one's
    site-packages through a .pth file (a .pth there is not run, so this project's own editable
    install stays out); returns its python."""
    base = getattr(sys, '_base_executable', sys.executable)
    run_ok([base, '-m', 'venv', '--without-pip', str(path)])
    python = str(path / 'bin' / 'python')
    purelib = run_ok([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'])
    with open(osp.join(purelib.stdout.strip(), 'pinned_stack.pth'), 'w') as f:
        f.write('\n'.join(site.getsitepackages()) + '\n')
    return python


def clean_env(python, **extra):
    """The environment of a user of ``python``: its bin first, no PYTHONPATH to our checkout."""
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    env['PATH'] = f'{osp.dirname(python)}{os.pathsep}{env["PATH"]}'
    return dict(env, **extra)


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory):
    python = fresh_venv(tmp_path_factory.mktemp('venv') / 'venv')
    pip('--python', python, 'install', '--no-deps', '--no-index', wheel)
    return python


def installed_package_dir(python, cwd):
    locate = 'import os, cbam_mmdet; print(os.path.dirname(cbam_mmdet.__file__))'
    return run_ok([python, '-c', locate], env=clean_env(python), cwd=cwd).stdout.strip()


def test_installed_package_is_the_wheel(installed, tmp_path):
    package = installed_package_dir(installed, tmp_path)
    assert package.startswith(osp.dirname(osp.dirname(installed)))
    assert osp.isfile(osp.join(package, '.mim', 'configs', INHERITED))
    assert not osp.islink(osp.join(package, '.mim', 'configs'))


def test_mim_trains_and_tests_an_inheriting_config_elsewhere(installed, synthetic, tmp_path):
    project = tmp_path / 'my_project'
    project.mkdir()
    (project / 'my_config.py').write_text(USER_CONFIG)
    package = installed_package_dir(installed, project)
    env = clean_env(installed, CBAM_MMDET_CONFIGS=osp.join(package, '.mim', 'configs'))
    mim = [installed, '-m', 'mim']
    train = run_ok(mim + ['train', 'cbam_mmdet', 'my_config.py', '--gpus', '0', '--work-dir',
                          'work'] + data_options(synthetic, max_iters=2), env=env, cwd=project)
    assert osp.join(package, '.mim', 'tools', 'train.py') in train.stdout
    assert (project / 'work' / 'iter_2.pth').is_file()
    dumped = (project / 'work' / 'my_config.py').read_text()
    assert "type='CBAMResNet'" in dumped and 'feat_channels=64' in dumped
    test = run_ok(mim + ['test', 'cbam_mmdet', 'my_config.py', '--checkpoint', 'work/iter_2.pth',
                         '--gpus', '0', '--work-dir', 'work_test', '--metrics-json', 'm.json'] +
                  data_options(synthetic), env=env, cwd=project)
    assert osp.join(package, '.mim', 'tools', 'test.py') in test.stdout
    assert 'coco/bbox_mAP' in (project / 'm.json').read_text()


def test_editable_install_uses_the_checkout_in_place(source_copy, tmp_path):
    """`make env`'s install: the package imports from the checkout, and its .mim/ links lead to
    the checkout's configs and tools (the path that inheriting configs use)."""
    python = fresh_venv(tmp_path / 'venv')
    pip('--python', python, 'install', '--no-deps', '--no-build-isolation', '--no-index', '-e',
        str(source_copy))
    package = installed_package_dir(python, tmp_path)
    assert osp.samefile(package, source_copy / 'cbam_mmdet')
    assert osp.samefile(osp.join(package, '.mim', 'configs'), source_copy / 'configs')
    assert osp.isfile(osp.join(package, '.mim', 'tools', 'train.py'))
