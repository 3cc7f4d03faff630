from .kernel_size_ssd_head import KernelSizeSSDHead

__all__ = ['KernelSizeSSDHead']
