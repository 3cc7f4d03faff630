"""Building and loading the C++ kernels: cache, errors, concurrent builds, no compiler."""
import ctypes
import threading

import pytest

from cbam_mmdet.runtime import cpp_library
from cbam_mmdet.runtime.cpp_library import CppBuildError, build_library, load_library

ADD = 'extern "C" int add(int a, int b) { return a + b; }\n'

pytestmark = pytest.mark.skipif(cpp_library.find_compiler() is None,
                                reason='no C++ compiler on this machine')


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('CBAM_MMDET_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def write(path, text):
    path.write_text(text)
    return path


def test_builds_once_per_source(tmp_path, cache):
    source = write(tmp_path / 'add.cpp', ADD)
    first = build_library(source, 'add')
    built_at = first.stat().st_mtime_ns
    assert first.parent == cache and first.name.startswith('add-')
    assert build_library(source, 'add') == first and first.stat().st_mtime_ns == built_at
    assert ctypes.CDLL(str(first)).add(2, 3) == 5
    changed = build_library(write(source, ADD.replace('a + b', 'a - b')), 'add')
    assert changed != first and ctypes.CDLL(str(changed)).add(2, 3) == -1
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, changed.name])


def test_compiler_error_is_reported_and_leaves_nothing(tmp_path, cache):
    source = write(tmp_path / 'broken.cpp', 'extern "C" int add(int a) { return a + ; }\n')
    with pytest.raises(CppBuildError, match=r'failed to compile .*broken\.cpp(.|\n)*error'):
        build_library(source, 'broken')
    assert list(cache.iterdir()) == []


def test_concurrent_builds_share_one_library(tmp_path, cache):
    source = write(tmp_path / 'add.cpp', ADD)
    paths, errors = [], []

    def build():
        try:
            paths.append(build_library(source, 'add'))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(paths)) == 1
    assert ctypes.CDLL(str(paths[0])).add(1, 1) == 2
    assert [p.name for p in cache.iterdir()] == [paths[0].name]  # no temporary files left


def test_without_compiler_warns_and_returns_none(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(cpp_library, 'find_compiler', lambda: None)
    source = write(tmp_path / 'add.cpp', ADD)
    with pytest.warns(RuntimeWarning, match=r'not available, falling back\. Reason: no C\+\+ '
                      r'compiler found .*install one .* or set CXX'):
        assert load_library(source, 'add', 'falling back') is None
