"""Bad backbone, plugin and CBAM arguments give an error naming the problem and the fix,
alone and through a whole detector config."""
import os.path as osp

import pytest
from mmengine.config import Config

from cbam_mmdet.models import CBAMResNet, CBAMResNeXt
from cbam_mmdet.models.roi_heads.shared_heads.cbam_res_layer import CBAMResLayer
from conftest import REPO_ROOT
from mmdet.registry import MODELS

DEMO_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'faster-rcnn_r18-cbam_fpn_200i_synthetic.py')
C4_CONFIG = osp.join(REPO_ROOT, 'configs', 'faster_rcnn', 'faster-rcnn_r50-cbam_c4_490k_coco.py')


def build_detector(config, **backbone):
    cfg = Config.fromfile(config)
    cfg.model.backbone.update(backbone)
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('backbone, error, expected', [
    (dict(cbam_cfg=dict(type='CBAM', ratio=4096)), ValueError,
     'CBAM: ratio must be an int in [1, in_channels] so that in_channels // ratio >= 1, got '
     'ratio=4096 with in_channels=64'),
    (dict(cbam_cfg=dict(type='CBAM', kernel_size=4)), ValueError,
     'CBAM: kernel_size must be a positive odd int'),
    (dict(cbam_cfg=dict(type='CBAM', arrangement='serial')), ValueError,
     "CBAM: invalid arrangement='serial'; valid values: 'channel_first'"),
    (dict(cbam_cfg=dict(type='CBAM', pool_types=('avg', 'lse'))), ValueError,
     "CBAM: invalid pool_types=('avg', 'lse')"),
    (dict(depth=42), ValueError, 'CBAMResNet: invalid depth=42; valid depths: [18, 34, 50, 101, '
     '152]'),
    (dict(cbam_stages=(True, True, False)), ValueError,
     'CBAMResNet: cbam_stages needs one bool per stage (4), got (True, True, False)'),
    (dict(cbam_cfg=dict(type='CBMA')), KeyError,
     "CBAMResNet: cbam_cfg type 'CBMA' is not registered in mmdet's MODELS registry"),
    (dict(plugins=[dict(cfg=dict(type='ContextBlock', ratio=0.25), position='after_conv3')]),
     ValueError, "CBAMResNet: plugin position 'after_conv3' is not supported by its "
     'CBAMBasicBlock blocks; valid positions: after_conv1, after_conv2'),
])
def test_bad_backbone_arguments_through_a_detector_config(backbone, error, expected):
    with pytest.raises(error) as exc:
        build_detector(DEMO_CONFIG, **backbone)
    assert expected in str(exc.value)


@pytest.mark.parametrize('plugin, error, expected', [
    (dict(position='after_conv3'), ValueError,
     "CBAMResNet: plugins[0] needs \"cfg\" and \"position\" keys, got {'position': "
     "'after_conv3'}; e.g. dict(cfg=dict(type='CBAM'), position='after_conv3')"),
    (dict(cfg=dict(type='CBAM')), ValueError, 'plugins[0] needs "cfg" and "position" keys'),
    (dict(cfg=dict(type='CBAM'), position='after_conv4'), ValueError,
     "CBAMResNet: plugin position 'after_conv4' is not supported by its CBAMBottleneck blocks; "
     'valid positions: after_conv1, after_conv2, after_conv3'),
    (dict(cfg=dict(type='CBAM'), position='after_conv3', stages=(True, False)), ValueError,
     'CBAMResNet: plugins[0]["stages"] needs one bool per stage (4), got (True, False)'),
    (dict(cfg=dict(type='NonLocal'), position='after_conv2'), KeyError,
     "CBAMResNet: plugins[0] type 'NonLocal' is not registered"),
    (dict(cfg=dict(ratio=4), position='after_conv2'), ValueError,
     'CBAMResNet: plugins[0] needs a config dict with a "type"'),
])
def test_bad_plugins(plugin, error, expected):
    with pytest.raises(error) as exc:
        CBAMResNet(depth=50, plugins=[plugin])
    assert expected in str(exc.value)


def test_resnext_names_its_own_block():
    with pytest.raises(ValueError,
                       match="'after_conv0' is not supported by its CBAMResNeXtBottleneck blocks"):
        CBAMResNeXt(depth=50, groups=32, base_width=4,
                    plugins=[dict(cfg=dict(type='CBAM'), position='after_conv0')])


def test_unregistered_cbam_in_the_shared_head():
    with pytest.raises(KeyError, match="CBAMResLayer: cbam_cfg type 'Cbam' is not registered"):
        CBAMResLayer(depth=50, cbam_cfg=dict(type='Cbam'))


def test_shared_head_through_a_c4_config():
    cfg = Config.fromfile(C4_CONFIG)
    cfg.model.roi_head.shared_head.update(depth=42, init_cfg=None)
    with pytest.raises(ValueError, match=r'CBAMResLayer: invalid depth=42; valid depths'):
        MODELS.build(cfg.model.roi_head)
