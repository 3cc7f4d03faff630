"""Mistakes of a user who swaps the backbone get a message that names the fix."""
import pytest
from mmengine.config import Config

from cbam_mmdet.models import CBAMResNet
from cbam_mmdet.models.utils import build_hints, warn_uncovered_stages
from mmdet.registry import MODELS

C4_CONFIG = 'mmdet::faster_rcnn/faster-rcnn_r50-caffe_c4-1x_coco.py'
FPN_CONFIG = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'


def detector_cfg(base, tmp_path, model):
    path = tmp_path / 'config.py'
    path.write_text(f"_base_ = '{base}'\n"
                    "custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)\n"
                    f'model = {model}\n')
    cfg = Config.fromfile(str(path))
    cfg.model.backbone.init_cfg = None
    return cfg.model


def build(model_cfg):
    with build_hints(model_cfg):
        return MODELS.build(model_cfg)


def test_c4_swap_without_a_cbam_shared_head_warns(tmp_path):
    model = build(detector_cfg(C4_CONFIG, tmp_path, "dict(backbone=dict(type='CBAMResNet'))"))
    with pytest.warns(UserWarning, match=r"the backbone has 13 CBAMs but the RoI head's shared "
                      r"head \(ResLayer.*its 3 blocks stay plain.*type='CBAMResLayer'"):
        warn_uncovered_stages(model)


def test_c4_swap_with_a_cbam_shared_head_is_quiet(tmp_path, recwarn):
    model = build(detector_cfg(
        C4_CONFIG, tmp_path, "dict(backbone=dict(type='CBAMResNet'), "
        "roi_head=dict(shared_head=dict(type='CBAMResLayer', init_cfg=None)))"))
    warn_uncovered_stages(model)
    assert not [w for w in recwarn if 'shared head' in str(w.message)]


def test_misspelled_backbone_type_suggests_the_registered_name(tmp_path):
    cfg = detector_cfg(FPN_CONFIG, tmp_path, "dict(backbone=dict(type='CBAMResNet'))")
    cfg.backbone.type = 'CBAMResnet'
    with pytest.raises(KeyError, match="'CBAMResnet' is not registered \\(did you mean "
                       "'CBAMResNet'"):
        build(cfg)


def test_stock_resnet18_with_the_cbam_plugin_points_to_cbamresnet(tmp_path):
    cfg = detector_cfg(FPN_CONFIG, tmp_path, (
        "dict(backbone=dict(depth=18, plugins=[dict(cfg=dict(type='CBAM'), "
        "position='after_conv3')]), neck=dict(in_channels=[64, 128, 256, 512]))"))
    with pytest.raises(AssertionError, match="Not implemented yet.\nHint: mmdet's ResNet takes "
                       "plugins in Bottleneck blocks only .* use type='CBAMResNet'"):
        build(cfg)


def test_misspelled_plugin_of_a_stock_resnet_is_named(tmp_path):
    cfg = detector_cfg(FPN_CONFIG, tmp_path, (
        "dict(backbone=dict(plugins=[dict(cfg=dict(type='CBMA'), position='after_conv3')]))"))
    with pytest.raises(KeyError, match="Hint: plugin type 'CBMA' of ResNet is not registered "
                       "\\(did you mean 'CBAM'"):
        build(cfg)


def test_misspelled_plugin_of_a_cbam_backbone_suggests_close_names():
    with pytest.raises(KeyError, match="'ContextBlok' is not registered in mmdet's MODELS "
                       "registry \\(did you mean 'ContextBlock'\\?\\)"):
        CBAMResNet(depth=50, plugins=[dict(cfg=dict(type='ContextBlok', ratio=0.25),
                                           position='after_conv2')])


def test_resnext_arguments_point_to_cbamresnext():
    with pytest.raises(TypeError, match="use type='CBAMResNeXt'"):
        CBAMResNet(depth=50, groups=32, base_width=4)


def test_a_second_cbam_in_a_block_needs_a_postfix():
    with pytest.raises(ValueError, match=r"plugins\[0\] and cbam_cfg would both be the plugin "
                       r"'cbam' at after_conv3 of stage 1.*postfix=2\) \(named cbam2\); or drop "
                       r'the plugin entry'):
        CBAMResNet(depth=50, plugins=[dict(cfg=dict(type='CBAM'), position='after_conv3')])
    backbone = CBAMResNet(depth=50, plugins=[dict(cfg=dict(type='CBAM', postfix=2),
                                                  position='after_conv3')])
    assert backbone.layer1[0].after_conv3_plugin_names == ['cbam2', 'cbam']
