import os.path as osp

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config

from conftest import REPO_ROOT, load_tool
from mmdet.registry import MODELS

complexity = load_tool('analysis/complexity')

DEMO = osp.join(REPO_ROOT, 'configs', 'demo')
CONFIGS = [osp.join(DEMO, 'faster-rcnn_r18_fpn_200i_synthetic.py'),
           osp.join(DEMO, 'faster-rcnn_r18-cbam_fpn_200i_synthetic.py')]


def direct_counts(config):
    """Parameters, and conv+linear FLOPs of backbone + neck on the demo's 192x192 test input,
    counted here."""
    model = MODELS.build(Config.fromfile(config).model).eval()
    features = torch.nn.Sequential(model.backbone, model.neck)
    analyzer = FlopAnalyzer(features, (torch.rand(1, 3, 192, 192), ))
    analyzer.unsupported_ops_warnings(False)
    by_op = analyzer.by_operator()
    return sum(p.numel() for p in model.parameters()), by_op['conv'] + by_op.get('linear', 0)


def test_config_numbers_match_direct_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(complexity, 'TABLE4', {'ResNet18': complexity.TABLE4['ResNet18']})
    results = complexity.main(CONFIGS + ['--out-dir', str(tmp_path)])
    for row, config in zip(results['configs'], CONFIGS):
        params, flops = direct_counts(config)
        assert row['params'] == params and row['input'] == '192x192'
        assert row['features'] == flops
        assert row['total'] > row['features'] and row['rois'] > 0
    cbam, plain = results['configs'][1], results['configs'][0]
    assert cbam['params'] > plain['params'] and cbam['features'] > plain['features']
    assert [r['network'] for r in results['table4']] == ['ResNet18', 'ResNet18 + CBAM']
    markdown = (tmp_path / 'complexity.md').read_text()
    assert 'faster-rcnn_r18-cbam_fpn_200i_synthetic.py' in markdown
    assert '| ResNet18 + CBAM | 11.78M | 11.78M | 1.815 | 1.815 |' in markdown
    assert (tmp_path / 'complexity.json').exists()


def test_single_stage_detectors_have_no_roi_count(tmp_path):
    config = osp.join(REPO_ROOT, 'configs', 'stairnet', 'stairnet300_mobilenetv1_250e_voc0712.py')
    row = complexity.main([config, '--out-dir', str(tmp_path), '--no-table4'])['configs'][0]
    assert row['params'] == 5997817 and row['input'] == '300x300' and row['rois'] is None
    assert row['total'] > row['features'] > 0  # the heads are counted in the total only
    assert '| `stairnet300_mobilenetv1_250e_voc0712.py` | 6.00M | 300x300 | 1.2 | 1.2 |' in (
        tmp_path / 'complexity.md').read_text()
