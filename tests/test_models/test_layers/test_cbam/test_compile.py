"""CBAM under torch.compile: no graph break, eager's results; in training the C++ kernels as one
operator, in inference the eager ops (``dispatch.py``, rule 1c)."""
import copy

import pytest
import torch
import torch._dynamo
import torch.nn as nn

from cbam_mmdet.models.backbones import CBAMResNet
from cbam_mmdet.models.layers import CBAM
from cbam_mmdet.models.layers.cbam import cpp_impl
from cbam_mmdet.models.utils import mmdet_scope_if_unset

pytestmark = pytest.mark.skipif(cpp_impl.library() is None,
                                reason='the C++ kernels could not be built here')


class ConvNormCBAM(nn.Module):
    """A residual block's end: conv, its BatchNorm and CBAM fused after it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 32, 3, padding=1)
        self.norm = nn.BatchNorm2d(32)
        self.cbam = CBAM(32, ratio=4)
        nn.init.normal_(self.cbam.spatial_gate.spatial.norm.weight)  # a non-constant Ms

    def forward(self, x):
        return self.cbam.forward_after_norm(self.norm, self.conv(x))


def test_compiled_block_computes_what_eager_computes():
    torch._dynamo.reset()
    model = ConvNormCBAM()
    reference = copy.deepcopy(model)
    compiled = torch.compile(model)
    x = torch.randn(2, 8, 12, 14)
    for _ in range(2):  # running statistics and num_batches_tracked follow step by step
        out = compiled(x)
        out.square().sum().backward()
        expected = reference(x)
        expected.square().sum().backward()
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    for (name, param), ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, ref.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, buffer), ref in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(buffer, ref, rtol=1e-6, atol=1e-7, msg=name)
    model.eval()
    reference.eval()
    with torch.no_grad():  # inference: the eager ops, compiled
        torch.testing.assert_close(compiled(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('training', [True, False])
def test_cbam_backbone_compiles_to_one_graph_with_the_kernels(training):
    with mmdet_scope_if_unset():
        model = CBAMResNet(depth=18, norm_eval=False)
    model.train(training)
    with torch.set_grad_enabled(training):
        explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 64, 64))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # Training: each of the 8 blocks' CBAM (with the block's last BN) is one C++ operator in the
    # graph. Inference: the eager ops, which the compiler fuses with the blocks' other work.
    kernels = str(explanation.graphs[0].graph).count('cbam_mmdet.cbam_cpu.default')
    assert kernels == (8 if training else 0)


def test_without_custom_operators_the_eager_ops_compile(monkeypatch):
    """torch < 2.4 has no torch.library.custom_op: training calls are traced as the eager ops."""
    monkeypatch.setattr(cpp_impl, 'OPERATOR', None)
    with mmdet_scope_if_unset():
        model = CBAMResNet(depth=18, norm_eval=False)
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 64, 64))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert 'cbam_mmdet.cbam_cpu' not in str(explanation.graphs[0].graph)
