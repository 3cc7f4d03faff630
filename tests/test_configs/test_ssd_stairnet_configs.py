"""The Table 8 configs: exactly the eight, each builds and predicts on CPU, parameter counts
within 1% of the paper's, one attention module per detection level, minimal differences."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from cbam_mmdet.models import CBAM
from conftest import REPO_ROOT
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs

# config -> (parameters with 21 classes: ours, paper Table 8 in millions)
EXPECTED = {
    'ssd/ssd300_vgg16_250e_voc0712.py': (26515936, 26.5),
    'stairnet/stairnet300_vgg16_250e_voc0712.py': (32005600, 32.0),
    'stairnet/stairnet300_vgg16-se_250e_voc0712.py': (32056384, 32.1),
    'stairnet/stairnet300_vgg16-cbam_250e_voc0712.py': (32056984, 32.1),
    'ssd/ssd300_mobilenetv1_250e_voc0712.py': (5796089, 5.81),
    'stairnet/stairnet300_mobilenetv1_250e_voc0712.py': (5997817, 5.98),
    'stairnet/stairnet300_mobilenetv1-se_250e_voc0712.py': (6010921, 5.99),
    'stairnet/stairnet300_mobilenetv1-cbam_250e_voc0712.py': (6011521, 6.00),
}
SE = dict(type='CBAM', arrangement='channel', pool_types=('avg', ))


def load(name):
    return Config.fromfile(osp.join(REPO_ROOT, 'configs', name))


def test_exactly_the_eight_configs():
    found = [osp.relpath(p, osp.join(REPO_ROOT, 'configs'))
             for d in ('ssd', 'stairnet')
             for p in glob.glob(osp.join(REPO_ROOT, 'configs', d, '*.py'))]
    assert sorted(found) == sorted(EXPECTED)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_config_builds_predicts_and_has_the_papers_parameter_count(name):
    cfg = load(name)
    assert cfg.custom_imports.imports == ['cbam_mmdet']
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)  # no init_weights(): no checkpoint is read
    params, paper_millions = EXPECTED[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert abs(params / (paper_millions * 1e6) - 1) < 0.01
    attention = model.neck.attentions if hasattr(model.neck, 'attentions') else []
    expected_cbams = 6 if '-se' in name or '-cbam' in name else 0
    assert sum(isinstance(m, CBAM) for m in model.modules()) == expected_cbams
    assert all(isinstance(a, CBAM) for a in attention) or expected_cbams == 0
    model.eval()
    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, 300, 300)], num_classes=20)
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    pred = results[0].pred_instances
    assert pred.bboxes.shape[1] == 4 and len(pred.scores) == len(pred.labels) > 0
    assert pred.labels.max() < 20


@pytest.mark.parametrize('backbone', ['vgg16', 'mobilenetv1'])
def test_configs_differ_only_where_they_should(backbone):
    ssd = load(f'ssd/ssd300_{backbone}_250e_voc0712.py').to_dict()
    stairnet = load(f'stairnet/stairnet300_{backbone}_250e_voc0712.py').to_dict()
    se = load(f'stairnet/stairnet300_{backbone}-se_250e_voc0712.py').to_dict()
    cbam = load(f'stairnet/stairnet300_{backbone}-cbam_250e_voc0712.py').to_dict()
    assert se['model']['neck'].pop('attention') == SE
    assert cbam['model']['neck'].pop('attention') == dict(type='CBAM')
    assert se == stairnet and cbam == stairnet
    neck, ssd_neck = stairnet['model'].pop('neck'), ssd['model'].pop('neck')
    assert (neck.pop('type'), ssd_neck.pop('type')) == ('StairNetNeck', 'SSDNeck')
    # the SSD neck's arguments pass through unchanged (they build StairNetNeck's SSDNeck)
    assert {k: v for k, v in neck.items() if k not in ('feat_channels', 'use_depthwise')} == (
        ssd_neck)
    stairnet['model']['bbox_head'].pop('in_channels')
    ssd['model']['bbox_head'].pop('in_channels')
    assert stairnet == ssd


def test_paper_training_setup():
    for name in EXPECTED:
        cfg = load(name)
        repeat = cfg.train_dataloader.dataset
        assert repeat.type == 'RepeatDataset' and repeat.times * cfg.train_cfg.max_epochs == 250
        assert [d.ann_file for d in repeat.dataset.datasets] == [
            'VOC2007/ImageSets/Main/trainval.txt', 'VOC2012/ImageSets/Main/trainval.txt']
        assert cfg.test_dataloader.dataset.ann_file == 'VOC2007/ImageSets/Main/test.txt'
        for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
            assert (evaluator.type, evaluator.eval_mode) == ('VOCMetric', '11points')
        optimizer = cfg.optim_wrapper.optimizer
        assert (optimizer.type, optimizer.momentum, optimizer.weight_decay) == ('SGD', 0.9, 5e-4)
        for pipeline in (repeat.dataset.datasets[0].pipeline, cfg.test_dataloader.dataset.pipeline):
            resize = next(t for t in pipeline if t.type == 'Resize')
            assert resize.scale == (300, 300) and not resize.keep_ratio
        assert cfg.train_dataloader.batch_sampler.drop_last
        assert 'RandomStateHook' in [h.type for h in cfg.custom_hooks]


def test_mobilenet_checkpoint_path_comes_from_the_environment(monkeypatch):
    name = 'stairnet/stairnet300_mobilenetv1-cbam_250e_voc0712.py'
    monkeypatch.delenv('MOBILENETV1_CHECKPOINT', raising=False)
    assert load(name).model.backbone.init_cfg.checkpoint == 'checkpoints/mobilenetv1_imagenet.pth'
    monkeypatch.setenv('MOBILENETV1_CHECKPOINT', '/weights/mnv1.pth')
    cfg = load(name)
    assert cfg.model.backbone.init_cfg.checkpoint == '/weights/mnv1.pth'
