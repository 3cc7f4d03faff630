"""tools/benchmark_onnx.py at a tiny size: both exported backbones match PyTorch, the table and
the JSON hold every measurement (no timing checks)."""
import json
import sys

import torch

from conftest import TOOLS, load_tool

sys.path.insert(0, TOOLS)  # benchmark_onnx imports benchmark_cbam from beside it
benchmark_onnx = load_tool('benchmark_onnx')


def test_tiny_run_writes_ratios_and_parity(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = benchmark_onnx.main(['--depth', '18', '--shape', '1', '3', '64', '64', '--reps',
                                      '1', '--iters', '1', '--out-dir', str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / 'results.json') as f:
        saved = json.load(f)
    assert saved['threads'] == 2 and saved['onnxruntime'] and saved['device']
    assert [r['runtime'] for r in saved['rows']] == ['onnxruntime', 'torch']
    for row in saved['rows']:
        assert row['cbam_ms'] > 0 and row['plain_ms'] > 0 and row['ratio'] > 0
    assert set(saved['ms_per_rep']) == {'onnxruntime_cbam', 'onnxruntime_plain', 'torch_cbam',
                                        'torch_plain'}
    assert max(saved['onnx_max_relative_difference'].values()) < 1e-4
    assert '| onnxruntime |' in result['table']
