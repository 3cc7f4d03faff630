"""tools/deployment/export_onnx.py and cbam_mmdet.deployment: exported graphs run in onnxruntime
and compute what PyTorch computes (CBAM options, a dynamic backbone at two sizes, a StairNet-CBAM
and a Faster R-CNN CBAM detector end to end), and what cannot be exported is refused with
nothing written."""
import glob
import os
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmcv.ops import RoIAlign

from cbam_mmdet.deployment import (ExportError, export_onnx, onnx_session, relative_difference,
                                   run_onnx)
from cbam_mmdet.deployment.parity import FEATURE_RTOL
from cbam_mmdet.models import CBAM
from cbam_mmdet.models.layers import use_impl
from conftest import DEMO_CONFIG, REPO_ROOT, load_tool

export_tool = load_tool('deployment/export_onnx')

STAIRNET_CBAM = osp.join(REPO_ROOT, 'configs', 'stairnet',
                         'stairnet300_mobilenetv1-cbam_250e_voc0712.py')
SSD_MOBILENET = osp.join(REPO_ROOT, 'configs', 'ssd', 'ssd300_mobilenetv1_250e_voc0712.py')
# Every option of the paper's ablations (Tables 1-3), and the authors' layout with and without
# the fast path.
CBAM_OPTIONS = [
    dict(),
    dict(fused=False),
    dict(pool_types=('avg', )),
    dict(pool_types=('max', )),
    dict(spatial_descriptor='conv'),
    dict(kernel_size=3),
    dict(spatial_norm_cfg=None),
    dict(arrangement='spatial_first'),
    dict(arrangement='parallel'),
    dict(arrangement='channel'),
    dict(arrangement='spatial'),
]


def voc_images(synthetic, count=2):
    return sorted(glob.glob(osp.join(synthetic, 'VOCdevkit', 'VOC2007', 'JPEGImages',
                                     '*.jpg')))[:count]


def no_files_left(folder):
    return [f for f in os.listdir(folder) if f != '.gitkeep'] == []


class CBAMChain(nn.Module):
    """One CBAM per option, applied in turn, each gate with non-trivial weights."""

    def __init__(self, channels=32):
        super().__init__()
        self.blocks = nn.ModuleList(CBAM(channels, **options) for options in CBAM_OPTIONS)
        for block in self.blocks:
            for param in block.parameters():
                nn.init.normal_(param, std=0.3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x) * 2
        return x


def test_every_cbam_option_exports_with_dynamic_sizes(tmp_path):
    torch.manual_seed(0)
    chain = CBAMChain().eval()
    path = str(tmp_path / 'cbam.onnx')
    export_onnx(chain, torch.randn(2, 32, 12, 10), path, ['out'],
                {0: 'batch', 2: 'height', 3: 'width'})
    session = onnx_session(path, threads=2)
    for shape in [(2, 32, 12, 10), (1, 32, 7, 19)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = chain(x)
        (actual, ) = run_onnx(session, x)
        assert relative_difference(actual, expected) < FEATURE_RTOL, shape


def test_backbone_parity_at_two_sizes_through_one_dynamic_file(tmp_path):
    out = str(tmp_path / 'r18_cbam.onnx')
    checks = export_tool.main([DEMO_CONFIG, '--out', out, '--part', 'backbone', '--dynamic',
                               '--shape', '64', '96', '--threads', '2'])
    assert [(c['batch'], c['shape']) for c in checks] == [(2, (64, 96)), (1, (128, 128))]
    assert all(c['ok'] for c in checks)
    # Independently: the file against the backbone with the fast path off, a third size.
    model = export_tool.load_model(
        export_tool.parse_args([DEMO_CONFIG, '--out', out, '--shape', '64', '96']))
    graph = export_tool.BackboneGraph(model).eval()
    image = torch.rand(1, 3, 96, 160) * 255
    with torch.no_grad(), use_impl('eager'):
        expected = graph(image)
    actual = run_onnx(onnx_session(out, threads=2), image)
    assert len(actual) == len(expected) == 4
    for a, e in zip(actual, expected):
        assert relative_difference(a, e) < FEATURE_RTOL


def assert_same_detections(checks):
    for check in checks:
        diff = check['differences']
        assert diff['detections'] > 0, 'nothing detected: the comparison would prove nothing'
        assert diff['exported'] == diff['detections'] and diff['unmatched'] == 0
        assert diff['box'] <= 1e-3 and diff['score'] <= 1e-4


def test_stairnet_cbam_detector_end_to_end(synthetic, tmp_path):
    out = str(tmp_path / 'stairnet_cbam.onnx')
    checks = export_tool.main([STAIRNET_CBAM, '--out', out, '--dynamic', '--threads', '2',
                               '--image', *voc_images(synthetic)])
    assert [(c['batch'], c['shape']) for c in checks] == [(2, (300, 300)), (1, (300, 300))]
    assert_same_detections(checks)
    assert osp.isfile(out)


def test_faster_rcnn_cbam_detector_end_to_end(synthetic, tmp_path):
    out = str(tmp_path / 'faster_rcnn_cbam.onnx')
    checks = export_tool.main([DEMO_CONFIG, '--out', out, '--shape', '96', '128', '--threads',
                               '2', '--image', *voc_images(synthetic)])
    assert [(c['batch'], c['shape']) for c in checks] == [(1, (96, 128))]
    assert_same_detections(checks)
    names = [o.name for o in onnx_session(out).get_outputs()]
    assert names == ['boxes', 'scores', 'labels', 'batch_index']


def refusal(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        export_tool.main(argv)
    return str(exc.value.code) + capsys.readouterr().err


@pytest.mark.parametrize('extra, message', [
    (['--cfg-options', 'model.roi_head.bbox_roi_extractor.roi_layer.pool_mode=max'],
     "pool_mode 'max' (only RoIAlign 'avg')"),
    (['--shape', '100', '96'], 'multiples of'),
    (['--opset', '17'], 'opset 18'),
])
def test_refusals_write_nothing(tmp_path, capsys, extra, message):
    out = str(tmp_path / 'model.onnx')
    assert message in refusal([DEMO_CONFIG, '--out', out, *extra], capsys)
    assert no_files_left(tmp_path)


def test_refuses_unsupported_nms_and_bad_arguments(tmp_path, capsys):
    out = str(tmp_path / 'ssd.onnx')
    assert "nms type 'soft_nms'" in refusal(
        [SSD_MOBILENET, '--out', out, '--cfg-options', 'model.test_cfg.nms.type=soft_nms'],
        capsys)
    assert 'must end in .onnx' in refusal([SSD_MOBILENET, '--out', str(tmp_path / 'x.bin')],
                                          capsys)
    assert 'no such file' in refusal([SSD_MOBILENET, str(tmp_path / 'missing.pth'), '--out',
                                      out], capsys)
    assert no_files_left(tmp_path)


def test_failed_export_leaves_no_file(tmp_path):

    class MmcvRoIAlign(nn.Module):
        """mmcv's C++ RoIAlign: opaque to torch.export (no fake kernel)."""

        def forward(self, x):
            return RoIAlign(2, 1.0)(x, x.new_tensor([[0, 0, 0, 3, 3]]))

    with pytest.raises(ExportError, match='torch.onnx.export failed for MmcvRoIAlign'):
        export_onnx(MmcvRoIAlign(), torch.ones(1, 2, 6, 6), str(tmp_path / 'u.onnx'), ['out'])
    assert no_files_left(tmp_path)


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(export_tool, 'FEATURE_RTOL', -1.0)
    with pytest.raises(SystemExit, match='beyond the bars; nothing written'):
        export_tool.main([DEMO_CONFIG, '--out', str(tmp_path / 'r18.onnx'), '--part',
                          'backbone', '--shape', '64', '64', '--threads', '2'])
    assert no_files_left(tmp_path)
