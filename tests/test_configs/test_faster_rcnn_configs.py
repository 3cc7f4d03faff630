"""The Table 7 configs: exactly the eight, each builds and predicts on CPU, fair pairs."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs

CONFIG_DIR = osp.join(osp.dirname(__file__), '..', '..', 'configs', 'faster_rcnn')
# config -> CBAM modules (paper: every residual block, the C4 RoI head's stage 5 included)
EXPECTED = {
    'faster-rcnn_r50_c4_490k_coco.py': 0,
    'faster-rcnn_r50-cbam_c4_490k_coco.py': 16,
    'faster-rcnn_r101_c4_490k_coco.py': 0,
    'faster-rcnn_r101-cbam_c4_490k_coco.py': 33,
    'faster-rcnn_r50_fpn_1x_coco.py': 0,
    'faster-rcnn_r50-cbam_fpn_1x_coco.py': 16,
    'faster-rcnn_r101_fpn_1x_coco.py': 0,
    'faster-rcnn_r101-cbam_fpn_1x_coco.py': 33,
}
PAIRS = [(name, name.replace('-cbam', '')) for name in EXPECTED if '-cbam' in name]


def load(name):
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def test_exactly_the_eight_configs():
    assert sorted(osp.basename(p) for p in glob.glob(osp.join(CONFIG_DIR, '*.py'))) == sorted(
        EXPECTED)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_config_builds_and_predicts(name):
    cfg = load(name)
    assert cfg.custom_imports.imports == ['cbam_mmdet']
    cfg.model.test_cfg.rpn.max_per_img = 20  # few RoIs: the C4 head runs stage 5 per RoI
    model = MODELS.build(cfg.model)  # no init_weights(): nothing is downloaded
    assert sum(type(m).__name__ == 'CBAM' for m in model.modules()) == EXPECTED[name]
    model.eval()
    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, 96, 128)], num_classes=80)
    with torch.no_grad():
        data = model.data_preprocessor(packed, False)
        results = model(**data, mode='predict')
    pred = results[0].pred_instances
    assert pred.bboxes.shape[1] == 4 and len(pred.scores) == len(pred.labels)


@pytest.mark.parametrize('cbam_name,baseline_name', PAIRS)
def test_cbam_config_differs_from_its_baseline_only_in_the_backbone(cbam_name, baseline_name):
    cbam, baseline = load(cbam_name).to_dict(), load(baseline_name).to_dict()
    # The one documented setting of the R50-CBAM and of the R101-CBAM configs, and what the
    # latter derive from it.
    for setting in ('cbam_r50_checkpoint', 'cbam_r101_checkpoint', 'from_classifier',
                    'imagenet_init'):
        cbam.pop(setting, None)
    for cfg in (cbam, baseline):
        cfg['model'].pop('backbone')
        if 'shared_head' in cfg['model']['roi_head']:  # C4: stage 5 is part of the backbone
            cfg['model']['roi_head'].pop('shared_head')
    assert cbam == baseline


def test_paper_setup_of_the_c4_configs():
    cfg = load('faster-rcnn_r101-cbam_c4_490k_coco.py')
    assert cfg.train_cfg.max_iters == 490000 and cfg.train_dataloader.batch_size == 1
    assert cfg.optim_wrapper.optimizer.lr == 0.001
    assert cfg.param_scheduler[0].milestones == [350000]
    assert cfg.model.backbone.style == 'pytorch' and cfg.model.backbone.start_from_parent
    assert cfg.model.roi_head.shared_head.type == 'CBAMResLayer'
    assert cfg.model.data_preprocessor.bgr_to_rgb  # torchvision normalisation
    r50 = load('faster-rcnn_r50-cbam_c4_490k_coco.py')
    assert r50.model.backbone.init_cfg.checkpoint == r50.cbam_r50_checkpoint
    assert r50.model.roi_head.shared_head.init_cfg.checkpoint == r50.cbam_r50_checkpoint
