from .shared_heads import CBAMResLayer

__all__ = ['CBAMResLayer']
