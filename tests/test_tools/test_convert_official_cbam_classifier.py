"""tools/convert_official_cbam.py --classifier: the authors' whole network as an mmpretrain
classifier of configs/imagenet/."""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.runner import load_checkpoint

from authors_reference import AuthorsCBAMResNet, randomize_, save_authors_checkpoint
from conftest import REPO_ROOT, load_tool
from mmdet.registry import MODELS

converter = load_tool('convert_official_cbam')
CONFIG = osp.join(REPO_ROOT, 'configs', 'imagenet', 'resnet{}-cbam_8xb32-90e_in1k.py')


def authors_logits(model, x):
    """The end of the authors' ``ResNet.forward``: ``AvgPool2d(7)`` (global at 224 px), fc."""
    return model.fc(F.avg_pool2d(model(x)[-1], 7).flatten(1))


@pytest.mark.parametrize('depth', [18, 50])
def test_converted_classifier_reproduces_the_authors_logits(depth, tmp_path):
    ref = randomize_(AuthorsCBAMResNet(depth), seed=depth).eval()
    src, dst = str(tmp_path / 'authors.pth.tar'), str(tmp_path / 'classifier.pth')
    save_authors_checkpoint(ref, src)
    assert converter.main([src, dst, '--classifier']) == 0

    classifier = MODELS.build(Config.fromfile(CONFIG.format(depth)).model)
    load_checkpoint(classifier, dst, map_location='cpu', strict=True)  # every key, no other
    classifier.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = classifier(x, mode='tensor'), authors_logits(ref, x)
    error = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    print(f'ResNet-{depth} + CBAM logits: max abs error {error:.2e} (max |logit| {scale:.2f})')
    assert error <= 2e-6 * scale
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


def test_classifier_summary_and_layout(tmp_path, capsys):
    src, dst = str(tmp_path / 'authors.pth.tar'), str(tmp_path / 'classifier.pth')
    save_authors_checkpoint(AuthorsCBAMResNet(18, num_classes=10), src)
    assert converter.main([src, dst, '--classifier']) == 0
    assert '(10-way fc kept as head.fc)' in capsys.readouterr().out
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint['meta']['arch'] == 'ImageClassifier(CBAMResNet-18)'
    keys = list(checkpoint['state_dict'])
    assert keys[-2:] == ['head.fc.weight', 'head.fc.bias']
    assert all(k.startswith('backbone.') for k in keys[:-2])


@pytest.mark.parametrize('case,message', [
    ('no-fc', 'has no ImageNet classifier (fc.weight, fc.bias)'),
    ('bad-fc', 'fc of shape (1000, 2048) / (1000,) does not classify the 512 channels'),
])
def test_sources_without_a_fitting_fc_are_refused(case, message, tmp_path, capsys):
    state = AuthorsCBAMResNet(18).state_dict()
    if case == 'no-fc':
        del state['fc.weight'], state['fc.bias']
    else:
        state['fc.weight'] = torch.zeros(1000, 2048)
    src, dst = str(tmp_path / f'{case}.pth'), tmp_path / 'out.pth'
    torch.save({'state_dict': {f'module.{k}': v for k, v in state.items()}}, src)
    assert converter.main([src, str(dst), '--classifier']) == 1
    err = capsys.readouterr().err
    assert message in err and src in err and not dst.exists()
    assert converter.main([src, str(dst)]) == 0  # the backbone alone needs no fc
