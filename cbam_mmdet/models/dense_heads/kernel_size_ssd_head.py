"""mmdet's SSDHead with a choice of predictor kernel, and able to predict in mmdet 3.3.0."""
from torch import nn

from mmdet.models.dense_heads import SSDHead
from mmdet.registry import MODELS


@MODELS.register_module()
class KernelSizeSSDHead(SSDHead):
    """``SSDHead`` whose class and box predictors are ``kernel_size`` x ``kernel_size`` convs.

    SSD300 (VGG16) predicts with 3x3 convs (``kernel_size=3``, ``SSDHead``'s own layers);
    MobileNet-SSD with 1x1 convs (``kernel_size=1``). Everything else is ``SSDHead``'s.

    mmdet 3.3.0's ``SSDHead`` cannot predict: ``BaseDenseHead._predict_by_feat_single`` reads
    ``self.loss_cls``, which ``SSDHead`` never sets (its loss is computed in
    ``loss_by_feat_single`` without a loss module). This head sets it to None, which
    ``_predict_by_feat_single`` reads as "no custom class channels", so scores are the softmax
    without the background column, as SSD intends.

    Args:
        kernel_size (int): Odd kernel size of the predictors. Defaults to 3.
        **kwargs: ``SSDHead``'s arguments.
    """

    def __init__(self, *args, kernel_size: int = 3, **kwargs) -> None:
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'KernelSizeSSDHead: kernel_size must be a positive odd int '
                             f'(3 for SSD300, 1 for MobileNet-SSD), got {kernel_size!r}')
        self.kernel_size = kernel_size
        super().__init__(*args, **kwargs)
        self.loss_cls = None

    def _init_layers(self) -> None:
        """``SSDHead``'s towers, with each tower's last conv (the predictor) resized."""
        super()._init_layers()
        for towers in (self.cls_convs, self.reg_convs):
            for tower in towers:
                predictor = tower[-1]
                if predictor.kernel_size[0] != self.kernel_size:
                    tower[-1] = nn.Conv2d(predictor.in_channels, predictor.out_channels,
                                          self.kernel_size, padding=self.kernel_size // 2)
