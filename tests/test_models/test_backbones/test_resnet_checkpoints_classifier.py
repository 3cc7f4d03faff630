"""mmpretrain classifier checkpoints (``backbone.*``, ``head.*``) for our backbones' init_cfg."""
import re
import warnings

import pytest
import torch

from authors_reference import randomize_
from cbam_mmdet.models import CBAMResNet
from cbam_mmdet.models.backbones.resnet_checkpoints import is_classifier_state
from cbam_mmdet.models.roi_heads.shared_heads.cbam_res_layer import CBAMResLayer
from cbam_mmdet.runtime.checkpoints import CheckpointError
from mmdet.models.backbones import ResNet


def save_classifier(path, backbone, num_classes=3):
    """``backbone``'s weights in a checkpoint laid out as mmpretrain's Runner saves an
    ImageClassifier; returns the path and the backbone's state dict."""
    backbone_state = randomize_(backbone).state_dict()
    state = {f'backbone.{k}': v for k, v in backbone_state.items()}
    state['head.fc.weight'] = torch.randn(num_classes, backbone.feat_dim)
    state['head.fc.bias'] = torch.randn(num_classes)
    torch.save({'state_dict': state, 'meta': {'epoch': 2}}, str(path))
    return str(path), backbone_state


def classifier_init(path, prefix='backbone.'):
    return dict(type='Pretrained', checkpoint=path, prefix=prefix)


@pytest.fixture(scope='module')
def cbam_r18_classifier(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp('cls') / 'cbam_r18.pth', CBAMResNet(depth=18))


def test_classifier_layout_is_recognised():
    state = {'backbone.conv1.weight': torch.zeros(1)}
    assert not is_classifier_state(state)
    state['head.fc.weight'] = torch.zeros(3, 512)
    assert is_classifier_state(state)
    assert is_classifier_state(dict(state, **{'neck.fc.weight': torch.zeros(1)}))
    assert not is_classifier_state(dict(state, **{'roi_head.fc.weight': torch.zeros(1)}))


def test_backbone_of_a_classifier_loads_with_the_prefix(cbam_r18_classifier):
    path, expected = cbam_r18_classifier
    backbone = CBAMResNet(depth=18, init_cfg=classifier_init(path))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        backbone.init_weights()
    loaded = backbone.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_classifier_without_the_prefix_says_which_to_set(cbam_r18_classifier):
    path, _ = cbam_r18_classifier
    backbone = CBAMResNet(depth=18, init_cfg=classifier_init(path, prefix=None))
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint {path} (init_cfg of CBAMResNet): is an mmpretrain image classifier "
            f"(backbone.*, head.* keys): load its backbone with prefix='backbone.'")):
        backbone.init_weights()


def test_plain_classifier_is_refused_for_a_cbam_backbone(tmp_path):
    path, _ = save_classifier(tmp_path / 'plain.pth', ResNet(depth=18))
    backbone = CBAMResNet(depth=18, init_cfg=classifier_init(path))
    with pytest.raises(CheckpointError, match=re.escape(f'{path} (init_cfg of CBAMResNet): is a '
                                                        f'plain classifier')) as exc:
        backbone.init_weights()
    assert 'start_from_parent=True' in str(exc.value)
    # On purpose: the plain network with every CBAM at a constant gain, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        CBAMResNet(depth=18, start_from_parent=True,
                   init_cfg=classifier_init(path)).init_weights()


def test_classifier_of_another_depth_is_refused(tmp_path):
    path, _ = save_classifier(tmp_path / 'cbam_r34.pth', CBAMResNet(depth=34))
    backbone = CBAMResNet(depth=18, init_cfg=classifier_init(path))
    with pytest.raises(CheckpointError, match=re.escape(
            'has (3, 4, 6, 3) blocks per stage (a depth-34 ResNet), but the CBAMResNet has '
            '(2, 2, 2, 2) (depth 18): set depth=34 or use a depth-18 checkpoint')):
        backbone.init_weights()


def test_shared_head_takes_its_stage_from_a_classifier(tmp_path):
    path, expected = save_classifier(tmp_path / 'cbam_r50.pth', CBAMResNet(depth=50))
    head = CBAMResLayer(depth=50, init_cfg=classifier_init(path))
    head.init_weights()
    for key, value in head.state_dict().items():
        assert torch.equal(value, expected[key]), key
