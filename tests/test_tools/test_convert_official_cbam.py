import os
import subprocess
import sys

import pytest
import torch
from mmengine.runner import load_checkpoint

from authors_reference import AuthorsCBAMResNet, randomize_, save_authors_checkpoint
from cbam_mmdet.models import CBAMResNet
from conftest import TOOLS, Exploit, bam_tensors, load_tool
from mmdet.models.backbones import ResNet

TOOL = os.path.join(TOOLS, 'convert_official_cbam.py')
converter = load_tool('convert_official_cbam')


@pytest.fixture(scope='module')
def authors_r50(tmp_path_factory):
    ref = randomize_(AuthorsCBAMResNet(50), seed=0).eval()
    path = str(tmp_path_factory.mktemp('authors') / 'RESNET50_CBAM.pth.tar')
    save_authors_checkpoint(ref, path)
    return ref, path


def max_relative_error(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize('depth', [18, 50])
def test_converted_backbone_reproduces_the_authors_network(depth, authors_r50, tmp_path):
    if depth == 50:
        ref, src = authors_r50
    else:
        ref = randomize_(AuthorsCBAMResNet(depth), seed=1).eval()
        src = str(tmp_path / 'src.pth')
        save_authors_checkpoint(ref, src)
    dst = str(tmp_path / 'backbone.pth')
    assert converter.main([src, dst]) == 0

    strict = CBAMResNet(depth=depth)
    load_checkpoint(strict, dst, map_location='cpu', strict=True)  # no missing/unexpected keys
    model = CBAMResNet(depth=depth, init_cfg=dict(type='Pretrained', checkpoint=dst))
    model.init_weights()
    model.eval()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    for stage, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape
        error = max_relative_error(a, b)
        print(f"stage {stage + 1}: max relative error {error:.2e}")
        assert error < 2e-6, f"stage {stage + 1}"


def test_command_line_prints_a_summary(authors_r50, tmp_path):
    _, src = authors_r50
    dst = tmp_path / 'out' / 'cbam_r50.pth'
    result = subprocess.run([sys.executable, TOOL, src, str(dst), '--depth', '50'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'CBAM ResNet-50' in result.stdout and '16 CBAM modules' in result.stdout
    assert dst.exists() and not [p for p in os.listdir(dst.parent) if p.startswith('.tmp-')]


def test_old_checkpoints_without_bn_counters_convert(tmp_path):
    ref = randomize_(AuthorsCBAMResNet(18), seed=2)
    state = {f'module.{k}': v for k, v in ref.state_dict().items()
             if not k.endswith('num_batches_tracked')}
    src = str(tmp_path / 'old.pth')
    torch.save({'state_dict': state}, src)
    dst = str(tmp_path / 'converted.pth')
    assert converter.main([src, dst]) == 0
    load_checkpoint(CBAMResNet(depth=18), dst, map_location='cpu', strict=True)


def write_hostile(path, marker):
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'payload': Exploit(marker)}, path)


def write_plain(path):
    state = {f'module.{k}': v for k, v in ResNet(depth=50).state_dict().items()}
    torch.save({'state_dict': state}, path)


def write_bam(path):
    """A ResNet-50 with BAM modules after stages 1-3, keyed as the authors' BAM code keys them."""
    state = ResNet(depth=50).state_dict()
    for stage, channels in enumerate((256, 512, 1024), 1):
        state.update(bam_tensors(f'bam{stage}', channels))
    torch.save({'state_dict': {f'module.{k}': v for k, v in state.items()}}, path)


def write_truncated(path, authors_src):
    with open(authors_src, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])


@pytest.mark.parametrize('case,args,message', [
    ('missing', [], 'no such file'),
    ('plain', [], 'not a CBAM ResNet'),
    ('bam', [], 'bam1.* (10 tensors), bam2.* (10 tensors), bam3.* (10 tensors)): another '
     'attention network (BAM, SE, ...), not CBAM'),
    ('truncated', [], 'is truncated, corrupt or not a PyTorch checkpoint'),
    ('hostile', [], 'refused by the weights-only loader'),
    ('wrong-depth', ['--depth', '101'], 'holds a ResNet-50'),
    ('not-a-resnet', [], 'no layer1'),
])
def test_bad_sources_are_refused_and_nothing_is_written(case, args, message, authors_r50,
                                                        tmp_path, capsys):
    src = str(tmp_path / f'{case}.pth')
    marker = tmp_path / 'pwned'
    if case == 'plain':
        write_plain(src)
    elif case == 'bam':
        write_bam(src)
    elif case == 'truncated':
        write_truncated(src, authors_r50[1])
    elif case == 'hostile':
        write_hostile(src, marker)
    elif case == 'wrong-depth':
        src = authors_r50[1]
    elif case == 'not-a-resnet':
        torch.save({'state_dict': {'backbone.stem.weight': torch.zeros(3)}}, src)
    dst = tmp_path / 'dst' / 'out.pth'
    assert converter.main([src, str(dst)] + args) == 1
    err = capsys.readouterr().err
    assert message in err and os.path.basename(src) in err
    assert not dst.exists() and not marker.exists()
    if dst.parent.exists():
        assert os.listdir(dst.parent) == []


def test_failed_write_keeps_the_previous_destination(authors_r50, tmp_path, monkeypatch):
    _, src = authors_r50
    dst = tmp_path / 'cbam.pth'
    dst.write_bytes(b'previous')

    def broken_save(obj, f):
        f.write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(converter.torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        converter.main([src, str(dst)])
    assert dst.read_bytes() == b'previous' and os.listdir(tmp_path) == ['cbam.pth']
