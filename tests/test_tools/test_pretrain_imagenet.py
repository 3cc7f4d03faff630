"""ImageNet pretraining with configs/imagenet/ on a synthetic ImageNet-layout set, and the
classifier -> detector step (docs/pretraining.md)."""
import glob
import importlib.util
import json
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config

from authors_reference import AuthorsCBAMResNet, randomize_, save_authors_checkpoint
from cbam_mmdet.runtime.checkpoints import CheckpointError
from conftest import DEMO_CONFIG, REPO_ROOT, TOOLS, load_tool, run
from mmdet.registry import MODELS

IMAGENET_CONFIGS = osp.join(REPO_ROOT, 'configs', 'imagenet')
R18_CBAM = osp.join(IMAGENET_CONFIGS, 'resnet18-cbam_8xb32-90e_in1k.py')
FASTER_RCNN = osp.join(REPO_ROOT, 'configs', 'faster_rcnn')
R101_CBAM_DETECTORS = ['faster-rcnn_r101-cbam_fpn_1x_coco.py',
                       'faster-rcnn_r101-cbam_c4_490k_coco.py']


def imagenet_options(data_root, max_epochs=2):
    """The config scaled down to the synthetic set: 32 px crops, batches of 4, one worker."""
    options = [f'train_cfg.max_epochs={max_epochs}', 'default_hooks.logger.interval=1',
               'train_dataloader.batch_size=4', 'train_dataloader.dataset.pipeline.1.scale=32']
    for split in ('train', 'val', 'test'):
        options += [f'{split}_dataloader.dataset.data_root={data_root}',
                    f'{split}_dataloader.num_workers=1']
    for split in ('val', 'test'):
        options += [f'{split}_dataloader.batch_size=6',
                    f'{split}_dataloader.dataset.pipeline.1.scale=36',
                    f'{split}_dataloader.dataset.pipeline.2.crop_size=32']
    return ['--cfg-options'] + options


def train(work_dir, data_root, *extra):
    run([sys.executable, osp.join(TOOLS, 'train.py'), R18_CBAM, '--work-dir', str(work_dir),
         *extra] + imagenet_options(data_root))


def load_state(path):
    return torch.load(path, map_location='cpu')  # weights_only, thanks to cbam_mmdet


@pytest.fixture(scope='module')
def trained(synthetic_imagenet, tmp_path_factory):
    """Two epochs (3 iterations each) of the R18 + CBAM classifier, validated after each."""
    work_dir = str(tmp_path_factory.mktemp('pretrain'))
    train(work_dir, synthetic_imagenet)
    return work_dir


def test_training_validates_top1_after_every_epoch(trained):
    scalars = glob.glob(osp.join(trained, '*', 'vis_data', 'scalars.json'))
    assert len(scalars) == 1
    records = [json.loads(line) for line in open(scalars[0])]
    top1 = [r['accuracy/top1'] for r in records if 'accuracy/top1' in r]
    assert len(top1) == 2 and all(0 <= value <= 100 for value in top1)
    assert sum('loss' in r for r in records) == 6
    assert osp.isfile(osp.join(trained, 'epoch_1.pth'))


def test_test_tool_reports_top1_and_top5(trained, synthetic_imagenet, tmp_path):
    metrics_file = tmp_path / 'metrics.json'
    run([sys.executable, osp.join(TOOLS, 'test.py'), R18_CBAM, osp.join(trained, 'epoch_2.pth'),
         '--work-dir', str(tmp_path), '--metrics-json', str(metrics_file)]
        + imagenet_options(synthetic_imagenet))
    metrics = json.loads(metrics_file.read_text())
    assert 0 <= metrics['accuracy/top1'] <= metrics['accuracy/top5'] <= 100


def test_resume_continues_exactly(trained, synthetic_imagenet, tmp_path):
    train(tmp_path, synthetic_imagenet, '--resume', osp.join(trained, 'epoch_1.pth'))
    resumed, uninterrupted = (load_state(osp.join(d, 'epoch_2.pth'))
                              for d in (str(tmp_path), trained))
    assert resumed['meta']['epoch'] == uninterrupted['meta']['epoch'] == 2
    assert resumed['state_dict'].keys() == uninterrupted['state_dict'].keys()
    for key, value in uninterrupted['state_dict'].items():
        assert torch.equal(resumed['state_dict'][key], value), key


def backbone_weights(classifier_state):
    return {k[len('backbone.'):]: v for k, v in classifier_state.items()
            if k.startswith('backbone.')}


def assert_loaded(module, weights):
    """``module`` holds exactly ``weights``: every key, nothing missing or left over."""
    state = module.state_dict()
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(state[key], value), key


def test_trained_classifier_initialises_the_demo_detector(trained):
    checkpoint = osp.join(trained, 'epoch_2.pth')
    weights = backbone_weights(load_state(checkpoint)['state_dict'])
    assert len({k.split('.cbam.')[0] for k in weights if '.cbam.' in k}) == 8  # one per block
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=checkpoint,
                                       prefix='backbone.')
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    assert_loaded(detector.backbone, weights)


def build_classifier(config_name, seed):
    """A classifier of ``configs/imagenet/CONFIG_NAME`` with random weights and BN statistics."""
    cfg = Config.fromfile(osp.join(IMAGENET_CONFIGS, config_name))
    return randomize_(MODELS.build(cfg.model), seed=seed)  # built in mmpretrain's scope


def save_classifier(model, path):
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 90}}, str(path))
    return str(path)


@pytest.fixture(scope='module')
def cbam_r101_classifier(tmp_path_factory):
    model = build_classifier('resnet101-cbam_8xb32-90e_in1k.py', seed=3)
    path = save_classifier(model, tmp_path_factory.mktemp('cls') / 'cbam_r101_in1k.pth')
    return path, backbone_weights(model.state_dict())


def detector_from(config_name, checkpoint, monkeypatch):
    monkeypatch.setenv('CBAM_R101_CHECKPOINT', checkpoint)
    return MODELS.build(Config.fromfile(osp.join(FASTER_RCNN, config_name)).model)


@pytest.mark.parametrize('config_name', R101_CBAM_DETECTORS)
def test_r101_cbam_detectors_default_to_torchvision_weights(config_name, monkeypatch):
    monkeypatch.delenv('CBAM_R101_CHECKPOINT', raising=False)
    model = Config.fromfile(osp.join(FASTER_RCNN, config_name)).model
    modules = [model.backbone] + ([model.roi_head.shared_head] if 'c4' in config_name else [])
    for module in modules:
        assert module.start_from_parent
        assert module.init_cfg == dict(type='Pretrained', checkpoint='torchvision://resnet101',
                                       prefix=None)


@pytest.mark.parametrize('config_name', R101_CBAM_DETECTORS)
def test_r101_cbam_detectors_start_from_a_classifier_through_one_setting(
        config_name, cbam_r101_classifier, monkeypatch):
    path, weights = cbam_r101_classifier
    detector = detector_from(config_name, path, monkeypatch)
    assert not detector.backbone.start_from_parent
    detector.init_weights()
    if 'c4' in config_name:  # stages 1-3 in the backbone, stage 4 in the RoI head
        head = detector.roi_head.shared_head
        assert_loaded(head, {k: v for k, v in weights.items() if k.startswith('layer4.')})
        weights = {k: v for k, v in weights.items() if not k.startswith('layer4.')}
    assert_loaded(detector.backbone, weights)


@pytest.fixture(scope='module')
def mismatched_classifiers(tmp_path_factory):
    """A CBAM ResNet-50 and a plain ResNet-101 classifier."""
    out = tmp_path_factory.mktemp('mismatched')
    return {name: save_classifier(build_classifier(config, seed=4), out / f'{name}.pth')
            for name, config in (('cbam_r50', 'resnet50-cbam_8xb32-90e_in1k.py'),
                                 ('r101', 'resnet101_8xb32-90e_in1k.py'))}


@pytest.mark.parametrize('config_name', R101_CBAM_DETECTORS)
def test_r101_cbam_detectors_refuse_mismatched_classifiers(config_name, mismatched_classifiers,
                                                           monkeypatch):
    with pytest.raises(CheckpointError, match=r'a depth-50 ResNet/ResNeXt.*use a depth-101'):
        detector_from(config_name, mismatched_classifiers['cbam_r50'], monkeypatch).init_weights()
    with pytest.raises(CheckpointError, match='is a plain classifier'):
        detector_from(config_name, mismatched_classifiers['r101'], monkeypatch).init_weights()


def test_mmpretrain_test_tool_evaluates_a_converted_authors_classifier(
        synthetic_imagenet, tmp_path):
    src, dst = str(tmp_path / 'RESNET50_CBAM.pth.tar'), str(tmp_path / 'cbam_r50_in1k.pth')
    save_authors_checkpoint(randomize_(AuthorsCBAMResNet(50), seed=6), src)
    assert load_tool('convert_official_cbam').main([src, dst, '--classifier']) == 0
    mmpretrain_tools = osp.join(
        importlib.util.find_spec('mmpretrain').submodule_search_locations[0], '.mim', 'tools')
    config = osp.join(IMAGENET_CONFIGS, 'resnet50-cbam_8xb32-100e_in1k.py')
    result = run([sys.executable, osp.join(mmpretrain_tools, 'test.py'), config, dst,
                  '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                  f'test_dataloader.dataset.data_root={synthetic_imagenet}',
                  'test_dataloader.num_workers=1', 'test_dataloader.dataset.pipeline.1.scale=36',
                  'test_dataloader.dataset.pipeline.2.crop_size=32'])
    assert 'accuracy/top1:' in result.stdout + result.stderr
