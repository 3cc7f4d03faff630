from .checks import DatasetError, check_datasets, is_first_process

__all__ = ['DatasetError', 'check_datasets', 'is_first_process']
