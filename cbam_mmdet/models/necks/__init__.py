from .stairnet_neck import SizeMatchedConvTranspose2d, StairNetNeck

__all__ = ['SizeMatchedConvTranspose2d', 'StairNetNeck']
