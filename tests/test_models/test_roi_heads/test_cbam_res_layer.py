import pytest
import torch
from mmengine.runner import save_checkpoint

from authors_reference import randomize_
from cbam_mmdet.models import CBAM, CBAMResLayer, CBAMResNet
from mmdet.models.roi_heads.shared_heads import ResLayer
from mmdet.registry import MODELS


def test_stage5_head_carries_cbam_with_backbone_key_names():
    head = MODELS.build(dict(type='CBAMResLayer', depth=50))
    assert sum(isinstance(m, CBAM) for m in head.modules()) == 3
    backbone_keys = {k for k in CBAMResNet(depth=50).state_dict() if k.startswith('layer4.')}
    assert set(head.state_dict()) == backbone_keys
    out = head(torch.rand(2, 1024, 14, 14))
    assert out.shape == (2, 2048, 7, 7)


def test_norm_eval_covers_cbam_bn():
    head = CBAMResLayer(depth=50, norm_eval=True)
    head.train()
    assert not head.layer4[0].cbam.spatial_gate.spatial.norm.training


@pytest.mark.parametrize('start_from_parent', [True, 'auto'])
def test_start_from_parent_equals_the_plain_head(tmp_path, start_from_parent):
    """Explicitly, and by default ('auto') with plain weights."""
    plain = randomize_(ResLayer(depth=50), seed=5)
    path = str(tmp_path / 'plain.pth')
    save_checkpoint({'state_dict': plain.state_dict()}, path)
    head = CBAMResLayer(depth=50, start_from_parent=start_from_parent,
                        init_cfg=dict(type='Pretrained', checkpoint=path))
    head.init_weights()
    head.eval()
    plain.eval()
    x = torch.rand(2, 1024, 14, 14)
    torch.testing.assert_close(head(x), plain(x), rtol=1e-5, atol=1e-5)


def test_sync_bn_head_synchronises_cbam_spatial_norm():
    head = CBAMResLayer(depth=50, norm_cfg=dict(type='SyncBN', requires_grad=True))
    norm = head.layer4[0].cbam.spatial_gate.spatial.norm
    assert isinstance(norm, torch.nn.SyncBatchNorm) and (norm.momentum, norm.eps) == (0.01, 1e-5)
