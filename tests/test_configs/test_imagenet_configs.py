"""The ImageNet configs (configs/imagenet/): Table 4's networks with the authors' recipe."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from cbam_mmdet.models import CBAMResNet
from cbam_mmdet.runtime.complexity import TABLE4, count_params, with_cbam
from mmdet.registry import MODELS

CONFIG_DIR = osp.join(osp.dirname(__file__), '..', '..', 'configs', 'imagenet')
# config -> (Table 4 row, with CBAM)
EXPECTED = {
    f'{arch}{"-cbam" if cbam else ""}_8xb32-90e_in1k.py': (row, cbam)
    for arch, row in (('resnet18', 'ResNet18'), ('resnet34', 'ResNet34'),
                      ('resnet50', 'ResNet50'), ('resnet101', 'ResNet101'),
                      ('resnext50-32x4d', 'ResNeXt50 (32x4d)'),
                      ('resnext101-32x4d', 'ResNeXt101 (32x4d)'))
    for cbam in (False, True)
}
EXPECTED['resnet50-cbam_8xb32-100e_in1k.py'] = ('ResNet50', True)  # the authors' release
PAIRS = [(name, name.replace('-cbam', '')) for name in EXPECTED if '-cbam_8xb32-90e' in name]


def load(name):
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def test_exactly_the_configs():
    assert sorted(osp.basename(p) for p in glob.glob(osp.join(CONFIG_DIR, '*.py'))) == sorted(
        EXPECTED)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_config_holds_the_table4_network(name):
    row, cbam = EXPECTED[name]
    table_backbone = TABLE4[row][0]
    cfg = load(name)
    backbone = cfg.model.backbone
    assert cfg.model.type == 'ImageClassifier' and cfg.model.neck.type == 'GlobalAveragePooling'
    # The detection backbones' own classes, built in mmdet's scope.
    assert backbone._scope_ == 'mmdet'
    expected = with_cbam(table_backbone) if cbam else table_backbone
    assert {k: backbone[k] for k in expected} == expected
    assert backbone.out_indices == (3, ) and backbone.style == 'pytorch'
    assert not backbone.norm_eval and not backbone.zero_init_residual and 'init_cfg' not in backbone
    assert cfg.model.head.num_classes == 1000
    assert cfg.model.head.in_channels == (512 if backbone.depth < 50 else 2048)
    assert cfg.model.head.init_cfg == dict(type='Kaiming', layer='Linear', mode='fan_in', bias=0)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_config_follows_the_authors_recipe(name):
    cfg = load(name)
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.custom_imports.imports == ['cbam_mmdet']
    assert [h.type for h in cfg.custom_hooks] == ['RandomStateHook']
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 256
    optimizer = {k: v for k, v in cfg.optim_wrapper.optimizer.items() if k != '_scope_'}
    assert optimizer == dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert 'paramwise_cfg' not in cfg.optim_wrapper  # weight decay on every parameter
    scheduler = cfg.param_scheduler
    epochs = 100 if '100e' in name else 90
    assert cfg.train_cfg.max_epochs == epochs and cfg.train_cfg.by_epoch
    assert scheduler.type == 'MultiStepLR' and scheduler.by_epoch and scheduler.gamma == 0.1
    assert scheduler.milestones == list(range(30, epochs, 30))  # lr * 0.1 ** (epoch // 30)
    assert cfg.data_preprocessor.mean == [123.675, 116.28, 103.53]
    assert cfg.data_preprocessor.std == [58.395, 57.12, 57.375] and cfg.data_preprocessor.to_rgb

    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert list(train) == ['LoadImageFromFile', 'RandomResizedCrop', 'RandomFlip', 'PackInputs']
    assert train['RandomResizedCrop'].scale == 224 and train['RandomFlip'].prob == 0.5
    for split in ('val', 'test'):
        test = {t.type: t for t in cfg[f'{split}_dataloader'].dataset.pipeline}
        assert list(test) == ['LoadImageFromFile', 'ResizeEdge', 'CenterCrop', 'PackInputs']
        assert test['ResizeEdge'].scale == 256 and test['ResizeEdge'].edge == 'short'
        assert test['CenterCrop'].crop_size == 224
        resizes = [train['RandomResizedCrop'], test['ResizeEdge']]
        loads = [train['LoadImageFromFile'], test['LoadImageFromFile']]
        # torchvision's transforms: PIL decoding and bilinear resizing
        assert all(t.backend == 'pillow' and t.interpolation == 'bilinear' for t in resizes)
        assert all(t.imdecode_backend == 'pillow' for t in loads)


@pytest.mark.parametrize('cbam_name,baseline_name', PAIRS)
def test_cbam_config_differs_from_its_baseline_only_in_the_backbone_type(cbam_name,
                                                                         baseline_name):
    cbam, baseline = load(cbam_name).to_dict(), load(baseline_name).to_dict()
    assert cbam['model']['backbone'].pop('type') == 'CBAM' + baseline['model']['backbone'].pop(
        'type')
    assert cbam == baseline


@pytest.mark.parametrize('name,paper_params', [('resnet18_8xb32-90e_in1k.py', 11.69),
                                               ('resnet18-cbam_8xb32-90e_in1k.py', 11.78)])
def test_classifier_builds_predicts_and_has_the_paper_parameter_count(name, paper_params):
    classifier = MODELS.build(load(name).model)  # in mmpretrain's scope (the config's)
    assert round(count_params(classifier) / 1e6, 2) == paper_params
    assert sum(type(m).__name__ == 'CBAM' for m in classifier.modules()) == (
        8 if 'cbam' in name else 0)
    if 'cbam' in name:  # classifier checkpoints hold exactly the detection backbone's keys
        assert isinstance(classifier.backbone, CBAMResNet)
        assert classifier.backbone.state_dict().keys() == CBAMResNet(depth=18).state_dict().keys()
    classifier.eval()
    with torch.no_grad():
        assert classifier(torch.rand(2, 3, 32, 32), mode='tensor').shape == (2, 1000)
