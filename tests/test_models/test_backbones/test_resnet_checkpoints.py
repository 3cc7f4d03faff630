"""Pretrained init checkpoints of our backbones are checked before mmengine loads them."""
import warnings

import pytest
import torch

from authors_reference import AuthorsCBAMResNet, save_authors_checkpoint
from cbam_mmdet.models import CBAMResNet, CBAMResNetV1d, CBAMResNeXt
from cbam_mmdet.models.backbones.resnet_checkpoints import resnet_depth, resnet_stage_blocks
from cbam_mmdet.models.roi_heads.shared_heads.cbam_res_layer import CBAMResLayer
from cbam_mmdet.runtime.checkpoints import CheckpointError
from conftest import Exploit, bam_tensors
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS


def pretrained(path, **kwargs):
    return dict(type='Pretrained', checkpoint=str(path), **kwargs)


def save_state(path, state, wrap=True):
    torch.save({'state_dict': state, 'meta': {}} if wrap else state, str(path))
    return path


def init(backbone):
    backbone.init_weights()
    return backbone


def refuse(backbone, error=CheckpointError):
    with pytest.raises(error) as exc:
        backbone.init_weights()
    return str(exc.value)


@pytest.fixture(scope='module')
def r18_state():
    torch.manual_seed(0)
    return CBAMResNet(depth=18).state_dict()


@pytest.fixture
def r18_file(tmp_path, r18_state):
    return save_state(tmp_path / 'cbam_r18.pth', r18_state)


def test_a_fitting_checkpoint_loads_without_warnings(r18_file, r18_state):
    backbone = CBAMResNet(depth=18, init_cfg=pretrained(r18_file))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        init(backbone)
    for key, value in r18_state.items():
        assert torch.equal(backbone.state_dict()[key], value), key


def test_missing_file_names_it(tmp_path):
    path = tmp_path / 'nowhere' / 'r18.pth'
    message = refuse(CBAMResNet(depth=18, init_cfg=pretrained(path)), FileNotFoundError)
    assert str(path) in message and 'no such file' in message
    assert 'convert_official_cbam' not in message


def test_missing_default_cbam_checkpoint_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    backbone = CBAMResNet(depth=50, init_cfg=pretrained('checkpoints/cbam_r50_backbone.pth'))
    message = refuse(backbone, FileNotFoundError)
    assert 'checkpoints/cbam_r50_backbone.pth: no such file' in message
    assert ('python tools/convert_official_cbam.py RESNET50_CBAM_new_name_wrap.pth '
            'checkpoints/cbam_r50_backbone.pth') in message
    assert 'CBAM_R50_CHECKPOINT' in message


@pytest.mark.parametrize('case, message', [
    ('empty', 'is empty (0 bytes)'),
    ('truncated', 'is truncated, corrupt or not a PyTorch checkpoint'),
    ('text', 'not a PyTorch checkpoint'),
    ('directory', 'is a directory'),
    ('hostile', 'refused by the weights-only loader (GLOBAL posix.system)'),
    ('no-state-dict', 'holds no state dict'),
    ('not-tensors', 'holds no state dict'),
])
def test_unreadable_files_are_refused(case, message, tmp_path, r18_file):
    path = tmp_path / f'{case}.pth'
    marker = tmp_path / 'pwned'
    if case == 'empty':
        path.write_bytes(b'')
    elif case == 'truncated':
        data = r18_file.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif case == 'text':
        path.write_text('<html>404 Not Found</html>')
    elif case == 'directory':
        path.mkdir()
    elif case == 'hostile':
        torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'x': Exploit(marker)},
                   str(path))
    elif case == 'no-state-dict':
        torch.save([torch.zeros(1)], str(path))
    elif case == 'not-tensors':
        torch.save({'state_dict': {'conv1.weight': [1, 2]}}, str(path))
    error = refuse(CBAMResNet(depth=18, init_cfg=pretrained(path)))
    assert message in error and str(path) in error
    assert not marker.exists()


def test_authors_unconverted_checkpoint_asks_for_the_converter(tmp_path):
    path = str(tmp_path / 'RESNET18_CBAM.pth.tar')
    save_authors_checkpoint(AuthorsCBAMResNet(18), path)
    message = refuse(CBAMResNet(depth=18, init_cfg=pretrained(path)))
    assert path in message and "authors' unconverted CBAM checkpoint" in message
    assert 'layer1.0.cbam.ChannelGate' in message
    assert 'python tools/convert_official_cbam.py' in message


def test_another_architecture_is_refused(tmp_path):
    path = save_state(tmp_path / 'vgg.pth', {'features.0.weight': torch.zeros(64, 3, 3, 3),
                                             'classifier.0.weight': torch.zeros(10, 4)})
    message = refuse(CBAMResNet(depth=18, init_cfg=pretrained(path)))
    assert 'is not a checkpoint of this architecture' in message and 'features.0.weight' in message


def test_whole_detector_needs_the_backbone_prefix(tmp_path, r18_state):
    # Stage keys first, so that keys like backbone.layer1.0.conv1.weight come before
    # backbone.conv1.weight: the prefix must still be the one that fits all keys.
    state = {f'backbone.{k}': v for k, v in sorted(r18_state.items(),
                                                   key=lambda kv: not kv[0].startswith('layer'))}
    state['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 64, 1, 1)
    path = save_state(tmp_path / 'detector.pth', state)
    message = refuse(CBAMResNet(depth=18, init_cfg=pretrained(path)))
    assert "has the module's weights under 'backbone.'" in message
    assert "set prefix='backbone.'" in message and str(path) in message

    backbone = init(CBAMResNet(depth=18, init_cfg=pretrained(path, prefix='backbone.')))
    assert torch.equal(backbone.conv1.weight, r18_state['conv1.weight'])
    message = refuse(CBAMResNet(depth=18, init_cfg=pretrained(path, prefix='model.backbone')))
    assert "no key starts with prefix='model.backbone'" in message
    assert 'backbone., neck.' in message


def test_another_depth_says_which_depth_to_set(tmp_path):
    path = save_state(tmp_path / 'r101.pth', ResNet(depth=101).state_dict(), wrap=False)
    message = refuse(CBAMResNet(depth=50, init_cfg=pretrained(path)))
    assert (f'checkpoint {path} (init_cfg of CBAMResNet): has (3, 4, 23, 3) blocks per stage '
            f'(a depth-101 ResNet/ResNeXt), but the CBAMResNet has (3, 4, 6, 3) (depth 50): '
            f'set depth=101 or use a depth-50 checkpoint') in message


def test_another_block_type_says_which_depth_to_set(tmp_path):
    path = save_state(tmp_path / 'r34.pth', ResNet(depth=34).state_dict())
    message = refuse(CBAMResNet(depth=50, init_cfg=pretrained(path)))
    assert ('has basic blocks (a depth-34 ResNet), but the CBAMResNet of depth 50 has '
            'bottleneck blocks: set depth=34') in message


def test_other_tensor_shapes_are_listed(tmp_path):
    path = save_state(tmp_path / 'narrow.pth', CBAMResNet(depth=18, base_channels=32).state_dict())
    message = refuse(CBAMResNet(depth=18, init_cfg=pretrained(path)))
    assert 'does not fit the CBAMResNet (depth 18)' in message
    assert 'other tensor shapes' in message
    assert 'conv1.weight: (32, 3, 7, 7) in the checkpoint, (64, 3, 7, 7) in the model' in message


def test_resnext_checkpoint_does_not_fit_a_resnet(tmp_path):
    path = save_state(tmp_path / 'x50.pth',
                      CBAMResNeXt(depth=50, groups=32, base_width=4).state_dict())
    message = refuse(CBAMResNet(depth=50, init_cfg=pretrained(path)))
    assert 'other tensor shapes' in message and 'layer1.0.conv1.weight' in message


def test_plain_stem_does_not_fit_a_deep_stem(tmp_path):
    path = save_state(tmp_path / 'r18.pth', ResNet(depth=18).state_dict())
    message = refuse(CBAMResNetV1d(depth=18, init_cfg=pretrained(path)))
    # conv1 / bn1 are no keys of the V1d model (ignored), its stem and avg-pool shortcuts are
    # missing from the plain checkpoint, whose conv shortcuts do not fit.
    assert '\n  - missing 27 keys: stem.0.weight, stem.1.weight' in message
    assert '\n  - unexpected 15 keys: layer2.0.downsample.0.weight' in message
    assert ('\n  - other tensor shapes for 3 keys: layer2.0.downsample.1.weight: (128,) in the '
            'checkpoint, (128, 64, 1, 1) in the model; layer3.0') in message


def test_partial_cbam_weights_are_refused(tmp_path, r18_state):
    state = {k: v for k, v in r18_state.items() if not k.startswith('layer4.1.cbam.')}
    path = save_state(tmp_path / 'partial.pth', state)
    message = refuse(CBAMResNet(depth=18, init_cfg=pretrained(path)))
    assert 'missing' in message and 'layer4.1.cbam.channel_gate' in message


def test_plain_resnet_checkpoint_with_start_from_parent_false_warns_once(tmp_path):
    torch.manual_seed(1)
    plain = ResNet(depth=18).state_dict()
    # torchvision's ImageNet checkpoints carry the classifier: not a backbone key, ignored.
    plain.update({'fc.weight': torch.zeros(1000, 512), 'fc.bias': torch.zeros(1000)})
    path = save_state(tmp_path / 'resnet18.pth', plain, wrap=False)
    with pytest.warns(UserWarning) as record:
        backbone = init(CBAMResNet(depth=18, start_from_parent=False, frozen_stages=1,
                                   init_cfg=pretrained(path)))
    ours = [w for w in record if 'plain ResNet without CBAM' in str(w.message)]
    assert len(ours) == 1
    assert "default 'auto'" in str(ours[0].message) and 'frozen_stages=1' in str(ours[0].message)
    assert torch.equal(backbone.layer3[0].conv2.weight, plain['layer3.0.conv2.weight'])

    for start_from_parent in (True, 'auto'):  # 'auto' is the default
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            init(CBAMResNet(depth=18, start_from_parent=start_from_parent,
                            init_cfg=pretrained(path)))


def test_keys_of_other_attention_modules_are_named_and_refused(tmp_path):
    state = ResNet(depth=18).state_dict()
    state.update(bam_tensors('bam1', 64))
    state['layer2.0.se.fc1.weight'] = torch.zeros(8, 128)
    path = save_state(tmp_path / 'bam_r18.pth', state)
    message = refuse(CBAMResNet(depth=18, init_cfg=pretrained(path)))
    assert ('holds 11 tensors of modules a ResNet does not have (bam1.* (10 tensors), '
            'layer2.0.se.* (1 tensor))') in message and 'BAM, SE' in message


def test_dcn_offsets_and_other_plugins_may_be_absent(tmp_path):
    path = save_state(tmp_path / 'resnet18.pth', ResNet(depth=18).state_dict())
    backbone = CBAMResNet(
        depth=18, start_from_parent=True, init_cfg=pretrained(path),
        plugins=[dict(cfg=dict(type='ContextBlock', ratio=1. / 4), position='after_conv1')])
    init(backbone)


def test_shared_head_is_checked_against_its_stage(tmp_path):
    r50 = save_state(tmp_path / 'cbam_r50.pth', CBAMResNet(depth=50).state_dict())
    head = init(CBAMResLayer(depth=50, init_cfg=pretrained(r50)))
    assert torch.equal(head.layer4[0].conv1.weight,
                       torch.load(str(r50), weights_only=True)['state_dict']
                       ['layer4.0.conv1.weight'])
    # Only its own stage counts: a depth-18 checkpoint has 2 blocks in layer4.
    r18 = save_state(tmp_path / 'r18.pth', ResNet(depth=18).state_dict())
    message = refuse(CBAMResLayer(depth=50, init_cfg=pretrained(r18)))
    assert 'but the CBAMResLayer has 3 in layer4 (depth 50): set depth=18' in message


def test_detector_config_refuses_a_bad_backbone_checkpoint(tmp_path):
    path = save_state(tmp_path / 'r101.pth', ResNet(depth=101).state_dict())
    detector = MODELS.build(dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor'),
        backbone=dict(type='CBAMResNet', depth=18, out_indices=(1, 2, 3),
                      init_cfg=pretrained(path)),
        neck=dict(type='FPN', in_channels=[128, 256, 512], out_channels=64, num_outs=3,
                  start_level=0, add_extra_convs='on_input'),
        bbox_head=dict(type='RetinaHead', num_classes=3, in_channels=64, feat_channels=64,
                       anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                             scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                                             strides=[8, 16, 32]),
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                       loss_cls=dict(type='FocalLoss', use_sigmoid=True),
                       loss_bbox=dict(type='L1Loss'))))
    with pytest.raises(CheckpointError, match='a depth-101 ResNet/ResNeXt.*set depth=101'):
        detector.init_weights()


def test_depth_helpers_shared_with_the_converter():
    assert resnet_stage_blocks(ResNet(depth=50).state_dict()) == (3, 4, 6, 3)
    assert resnet_depth((3, 4, 6, 3), bottleneck=True) == 50
    assert resnet_depth((3, 4, 6, 3), bottleneck=False) == 34
    assert resnet_depth((2, 2, 2, 2), bottleneck=True) is None
    assert resnet_depth((3, 4, 5, 3), bottleneck=True) is None
