"""Activation memory on any device: the bytes autograd keeps for backward."""
from typing import Callable, Iterable

import torch


def saved_tensor_bytes(forward: Callable[[], object], ignore: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``forward()`` runs.

    Storages shared by several saved tensors (e.g. a ReLU output saved by the ReLU and the next
    conv) count once; those of ``ignore`` (a model's parameters, resident anyway) not at all.
    This is what a training step holds at its peak besides parameters, gradients and outputs;
    unlike allocator statistics it is exact and device independent.
    """
    ignored = {t.untyped_storage().data_ptr() for t in ignore}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in ignored:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())
