"""mmpretrain classifier checkpoints (``backbone.*``, ``head.*``) for our backbones' init_cfg."""
import warnings

import pytest
import torch

from cbam_mmdet.models import CBAMResNet
from cbam_mmdet.models.roi_heads.shared_heads.cbam_res_layer import CBAMResLayer
from cbam_mmdet.utils.pretrained import CheckpointError, is_classifier_state
from mmdet.models.backbones import ResNet


def save_classifier(path, backbone_state, num_classes=3):
    """A checkpoint laid out as mmpretrain's Runner saves an ImageClassifier."""
    channels = 2048 if 'layer4.0.conv3.weight' in backbone_state else 512
    state = {f'backbone.{k}': v for k, v in backbone_state.items()}
    state['head.fc.weight'] = torch.randn(num_classes, channels)
    state['head.fc.bias'] = torch.randn(num_classes)
    torch.save({'state_dict': state, 'meta': {'epoch': 2}}, str(path))
    return str(path)


def classifier_init(path, prefix='backbone.'):
    return dict(type='Pretrained', checkpoint=path, prefix=prefix)


def refuse(module):
    with pytest.raises(CheckpointError) as exc:
        module.init_weights()
    return str(exc.value)


@pytest.fixture(scope='module')
def cbam_r18_state():
    torch.manual_seed(0)
    return CBAMResNet(depth=18).state_dict()


def test_classifier_layout_is_recognised(cbam_r18_state):
    state = {f'backbone.{k}': v for k, v in cbam_r18_state.items()}
    assert not is_classifier_state(state)
    state['head.fc.weight'] = torch.zeros(3, 512)
    assert is_classifier_state(state)
    assert is_classifier_state(dict(state, **{'neck.fc.weight': torch.zeros(1)}))
    assert not is_classifier_state(dict(state, **{'roi_head.fc.weight': torch.zeros(1)}))  # detector


def test_backbone_of_a_classifier_loads_with_the_prefix(tmp_path, cbam_r18_state):
    path = save_classifier(tmp_path / 'cls.pth', cbam_r18_state)
    backbone = CBAMResNet(depth=18, init_cfg=classifier_init(path))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        backbone.init_weights()
    loaded = backbone.state_dict()
    assert loaded.keys() == cbam_r18_state.keys()
    for key, value in cbam_r18_state.items():
        assert torch.equal(loaded[key], value), key


def test_classifier_without_the_prefix_says_which_to_set(tmp_path, cbam_r18_state):
    path = save_classifier(tmp_path / 'cls.pth', cbam_r18_state)
    message = refuse(CBAMResNet(depth=18, init_cfg=classifier_init(path, prefix=None)))
    assert path in message and 'is an mmpretrain image classifier' in message
    assert "prefix='backbone.'" in message


def test_plain_classifier_is_refused_for_a_cbam_backbone(tmp_path):
    path = save_classifier(tmp_path / 'plain.pth', ResNet(depth=18).state_dict())
    message = refuse(CBAMResNet(depth=18, init_cfg=classifier_init(path)))
    assert path in message and 'is a plain classifier' in message
    assert 'start_from_parent=True' in message
    # On purpose: the plain network with every CBAM at a constant gain, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        CBAMResNet(depth=18, start_from_parent=True,
                   init_cfg=classifier_init(path)).init_weights()


def test_classifier_of_another_depth_is_refused(tmp_path):
    path = save_classifier(tmp_path / 'cbam_r34.pth', CBAMResNet(depth=34).state_dict())
    message = refuse(CBAMResNet(depth=18, init_cfg=classifier_init(path)))
    assert ('has (3, 4, 6, 3) blocks per stage (a depth-34 ResNet), but the CBAMResNet has '
            '(2, 2, 2, 2) (depth 18): set depth=34 or use a depth-18 checkpoint') in message


def test_shared_head_takes_its_stage_from_a_classifier(tmp_path):
    torch.manual_seed(1)
    state = CBAMResNet(depth=50).state_dict()
    path = save_classifier(tmp_path / 'cbam_r50.pth', state)
    head = CBAMResLayer(depth=50, init_cfg=classifier_init(path))
    head.init_weights()
    for key, value in head.state_dict().items():
        assert torch.equal(value, state[key]), key
