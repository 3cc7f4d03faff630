"""The pinned stack works: registration, compiled ops, and mmdet:: base configs."""
import torch
from mmengine.config import Config

from mmdet.registry import MODELS

PROJECT_COMPONENTS = ['CBAM', 'CBAMResNet', 'CBAMResNetV1d', 'CBAMResNeXt']


def test_components_registered_after_import():
    import cbam_mmdet  # noqa: F401
    for name in PROJECT_COMPONENTS:
        assert MODELS.get(name) is not None, name
        assert name in MODELS.module_dict, f'{name} must live in mmdet\'s own MODELS registry'


def test_custom_imports_in_a_config_is_enough(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(
        "custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)\n"
        "model = dict(type='CBAMResNet', depth=18)\n")
    cfg = Config.fromfile(str(cfg_file))
    assert type(MODELS.build(cfg.model)).__name__ == 'CBAMResNet'


def test_torchvision_ops_run():
    from torchvision.ops import nms, roi_align
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    out = roi_align(torch.rand(1, 2, 16, 16), [boxes[:1]], output_size=(2, 2))
    assert out.shape == (1, 2, 2, 2)


def test_mmcv_compiled_ops_run():
    from mmcv.ops import RoIAlign, batched_nms, nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2] and dets.shape == (2, 5)
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(type='nms',
                                                                       iou_threshold=0.5))
    assert sorted(keep.tolist()) == [0, 1, 2]
    feats = torch.arange(64.).view(1, 1, 8, 8)
    pooled = RoIAlign((1, 1), spatial_scale=1.0, sampling_ratio=1, aligned=False)(
        feats, torch.tensor([[0., 0., 0., 7., 7.]]))
    torch.testing.assert_close(pooled.flatten(), torch.tensor([feats[0, 0, 3:5, 3:5].mean()]))


def test_mmdet_base_config_resolves(tmp_path):
    cfg_file = tmp_path / 'faster-rcnn_r18-cbam_fpn_1x_coco.py'
    cfg_file.write_text(
        "_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['cbam_mmdet'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(type='CBAMResNet', depth=18, init_cfg=None),\n"
        "             neck=dict(in_channels=[64, 128, 256, 512]))\n")
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.model.type == 'FasterRCNN' and cfg.model.backbone.type == 'CBAMResNet'
    assert cfg.train_dataloader.dataset.type == 'CocoDataset'  # inherited from mmdet's bases
    detector = MODELS.build(cfg.model)
    assert type(detector.backbone).__name__ == 'CBAMResNet'


def test_mmpretrain_builds_our_imagenet_classifier():
    from conftest import load_tool
    assert load_tool('check_env').check_classifier().__version__ == '1.2.0'
