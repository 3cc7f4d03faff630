"""start_from_parent='auto' (the default): no CBAM keeps a random gate inside pretrained plain
features, frozen stages included; CBAM weights and from-scratch training are left as they are."""
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import save_checkpoint

from authors_reference import randomize_
from cbam_mmdet.models import CBAMResNet
from cbam_mmdet.models.backbones.resnet_checkpoints import (PLAIN, UNKNOWN, pretrained_weights_kind,
                                                            resolve_start_from_parent)
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS

README_CONFIG = """
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)
model = dict(backbone=dict(type='CBAMResNet'))  # everything else of mmdet's ResNet is kept
"""


def save(module, path):
    save_checkpoint({'state_dict': module.state_dict()}, str(path))
    return str(path)


@pytest.fixture(scope='module')
def plain_r50(tmp_path_factory):
    """A plain ResNet-50 'ImageNet' checkpoint with non-trivial weights and statistics."""
    plain = randomize_(ResNet(depth=50), seed=11)
    return plain, save(plain, tmp_path_factory.mktemp('plain') / 'resnet50.pth')


def test_readme_three_lines_with_plain_weights_start_as_the_plain_network(plain_r50, tmp_path):
    plain, path = plain_r50
    config = tmp_path / 'faster-rcnn_r50-cbam_fpn.py'
    config.write_text(README_CONFIG)
    cfg = Config.fromfile(str(config))
    # The README's config loads torchvision's weights; here a generated plain checkpoint.
    cfg.model.backbone.init_cfg.checkpoint = path
    assert cfg.model.backbone.frozen_stages == 1 and cfg.model.backbone.norm_eval
    detector = MODELS.build(cfg.model)
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        detector.init_weights()
    backbone = detector.backbone
    frozen_cbams = [block.cbam for block in backbone.layer1]
    assert all(not p.requires_grad for cbam in frozen_cbams for p in cbam.parameters())
    # No random gate: every CBAM scales by the same constant, its last layers are zero.
    for block in backbone.blocks():
        assert not block.cbam.channel_gate.mlp[2].weight.any()
    backbone.eval()
    reference = ResNet(depth=50, frozen_stages=1, norm_eval=True)
    reference.load_state_dict(plain.state_dict())
    reference.eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        for ours, theirs in zip(backbone(x), reference(x)):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_cbam_weights_load_unchanged_by_default(tmp_path):
    cbam = randomize_(CBAMResNet(depth=18), seed=2)
    path = save(cbam, tmp_path / 'cbam_r18.pth')
    backbone = CBAMResNet(depth=18, init_cfg=dict(type='Pretrained', checkpoint=path))
    backbone.init_weights()
    for key, value in cbam.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[key], value)


def test_from_scratch_keeps_the_authors_init():
    torch.manual_seed(0)
    backbone = CBAMResNet(depth=18)
    backbone.init_weights()
    # The channel MLP keeps PyTorch's default init (not reset to a constant gain).
    assert backbone.layer1[0].cbam.channel_gate.mlp[2].weight.abs().sum() > 0


def test_model_zoos_are_plain_and_downloads_unknown():
    def pretrained(checkpoint):
        return dict(type='Pretrained', checkpoint=checkpoint)

    assert pretrained_weights_kind(pretrained('torchvision://resnet50')) == PLAIN
    assert pretrained_weights_kind(
        [dict(type='Kaiming'), pretrained('open-mmlab://detectron2/resnet50_caffe')]) == PLAIN
    assert pretrained_weights_kind(pretrained('https://example.org/r50.pth')) == UNKNOWN
    assert pretrained_weights_kind(None) is None
    assert resolve_start_from_parent('CBAMResNet', 'auto', PLAIN)
    with pytest.warns(UserWarning, match="cannot tell whether the downloaded"):
        assert not resolve_start_from_parent('CBAMResNet', 'auto', UNKNOWN)


@pytest.mark.parametrize('value', ['yes', None, 1.0])
def test_invalid_start_from_parent_is_refused(value):
    with pytest.raises(ValueError, match="start_from_parent must be True, False or 'auto'"):
        CBAMResNet(depth=18, start_from_parent=value)
