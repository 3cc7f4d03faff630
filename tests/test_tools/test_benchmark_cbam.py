"""tools/benchmark_cbam.py at tiny sizes: table, JSON and plot content (no timing checks)."""
import json
import os
import subprocess

import pytest
import torch

from cbam_mmdet.models.layers import get_impl, record_choices
from conftest import load_tool

benchmark_cbam = load_tool('benchmark_cbam')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('benchmark')
    argv = ['--reps', '1', '--iters', '1', '--threads', '2', '--module-shape', '2', '16', '6',
            '8', '--backbone-shape', '1', '3', '64', '64', '--depth', '18', '--out-dir',
            str(out_dir)]
    threads = torch.get_num_threads()
    yield benchmark_cbam.main(argv), out_dir
    torch.set_num_threads(threads)


def test_json_holds_every_measurement(tiny_run):
    result, out_dir = tiny_run
    with open(out_dir / 'results.json') as f:
        saved = json.load(f)
    assert saved['device_type'] == 'cpu' and saved['threads'] == 2
    assert saved['torch'] and saved['device']
    rows = {(r['scope'], r['setting'], r['mode']): r for r in saved['rows']}
    assert set(rows) == {(scope, 'fp32', mode) for scope in ('module', 'backbone')
                         for mode in benchmark_cbam.MODES}
    assert set(rows['module', 'fp32', 'train']['ms']) == {'fused', 'fused_torch', 'eager',
                                                          'eager_amax'}
    backbone_train = rows['backbone', 'fp32', 'train']
    assert set(backbone_train['ms']) == {'fused', 'fused_torch', 'eager', 'plain'}
    assert set(backbone_train['ratio_to_reference']) == {'fused', 'fused_torch', 'eager'}
    assert all(len(times) == 1 for times in backbone_train['ms_per_rep'].values())
    assert all(ms > 0 for row in saved['rows'] for ms in row['ms'].values())
    memory = backbone_train['train_bytes']
    assert memory['fused'] < memory['eager']  # exact byte counts, not timings
    assert backbone_train['memory_ratio_to_reference']['fused'] == pytest.approx(
        memory['fused'] / memory['plain'])
    assert saved['table'] == benchmark_cbam.format_table(result['rows'])


def test_table_and_plot(tiny_run, capsys):
    result, out_dir = tiny_run
    table = benchmark_cbam.format_table(result['rows'])
    lines = table.splitlines()
    assert lines[0].startswith('| scope | setting | mode | variant | ms |')
    assert len(lines) == 2 + 3 * 4 + 3 * 4  # header + 3 modes x 4 variants per scope
    assert '| backbone | fp32 | train | plain |' in table and 'reference' in table
    with open(out_dir / 'ratios.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_variants_take_their_paths():
    """'fused' runs the C++ kernels, 'fused_torch' the PyTorch-ops function; the switch is
    undone after each forward."""
    variants = benchmark_cbam.build_module_variants(16)
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    before, paths = get_impl(), {}
    for name in ('fused', 'fused_torch', 'eager'):
        with record_choices() as choices:
            variants[name](x)
        paths[name] = [choice.impl for choice in choices]
    assert paths == dict(fused=['cpp'], fused_torch=['torch'], eager=['eager'])
    assert get_impl() == before


def test_amp_and_compile_settings(tmp_path):
    """--modes amp compile: autocast rows with memory, compiled rows with their first steps (each
    variant's in a new process; 'shared': with the cache the timing filled, an empty one would
    make this test compile everything twice) and the graph breaks torch._dynamo.explain counts
    (none from CBAM)."""
    threads = torch.get_num_threads()
    try:
        result = benchmark_cbam.main([
            '--modes', 'amp', 'compile', '--amp-dtypes', 'bf16', '--scopes', 'module', '--reps',
            '1', '--iters', '1', '--module-shape', '2', '16', '6', '8', '--first-step-cache',
            'shared', '--out-dir', str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    rows = {(r['setting'], r['mode']): r for r in result['rows']}
    assert set(rows) == {('amp-bf16', mode) for mode in benchmark_cbam.MODES} | {
        ('compile', mode) for mode in benchmark_cbam.COMPILE_MODES}
    assert rows['amp-bf16', 'train']['memory_ratio_to_reference']['fused'] < 1
    compiled = rows['compile', 'train']
    assert set(compiled['ms']) == {'fused', 'eager'} and 'train_bytes' not in compiled
    assert compiled['graph_breaks']['fused']['breaks'] == 0
    for key in ('first_train_step_ms', 'first_inference_step_ms'):
        assert set(compiled[key]) == {'fused', 'eager'} and all(
            ms > 0 for ms in compiled[key].values())
    assert 'first train step, module compile: fused' in benchmark_cbam.format_first_steps(
        result['rows'])


@pytest.mark.parametrize('cache', ['empty', 'shared'])
def test_first_steps_in_new_process_cache(cache, monkeypatch, tmp_path):
    """--first-step-cache: 'empty' gives the new process a new, empty compile cache, 'shared'
    this process's; the last line the process prints is the result, a failure names the
    variant and carries its error output."""
    shared = tmp_path / 'shared'
    shared.mkdir()
    (shared / 'kernel.so').write_text('')
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(shared))
    seen = {}

    def run(argv, env, **kwargs):
        folder = env['TORCHINDUCTOR_CACHE_DIR']
        seen.update(argv=argv, folder=folder, files=os.listdir(folder))
        return subprocess.CompletedProcess(argv, seen.get('rc', 0), 'compiling\n{"train": 1.5}',
                                           'Traceback: out of memory')

    monkeypatch.setattr(benchmark_cbam.subprocess, 'run', run)
    args = benchmark_cbam.parse_args(['--first-step-cache', cache, '--depth', '18'])
    assert benchmark_cbam.first_steps_in_new_process('backbone', 'fused', args) == {'train': 1.5}
    assert seen['argv'][2:6] == ['--first-compiled-steps', 'backbone', 'fused', '--device']
    if cache == 'shared':
        assert seen['folder'] == str(shared) and seen['files'] == ['kernel.so']
    else:
        assert seen['folder'] != str(shared) and seen['files'] == []
        assert not os.path.exists(seen['folder'])  # removed afterwards
    seen['rc'] = 1
    with pytest.raises(RuntimeError, match='backbone fused failed:\nTraceback: out of memory'):
        benchmark_cbam.first_steps_in_new_process('backbone', 'fused', args)
