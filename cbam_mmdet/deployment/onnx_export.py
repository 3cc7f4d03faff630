"""Export a graph with torch's ONNX exporter, run it in onnxruntime, compare with PyTorch.

``torch.onnx.export(..., dynamo=True)`` (torch 2.13's default exporter) traces with
``torch.export``, during which ``torch.compiler.is_compiling()`` is True: CBAM then runs its
eager ops (its fused autograd functions and C++ kernels are opaque to tracers), which every
runtime can execute. The file is written to a temporary name beside the destination and renamed
over it only once complete, weights included in the one file.
"""
import os
import os.path as osp
import tempfile
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

# torch 2.13's exporter translates to opset 18 (onnxscript's torchlib) and converts upwards;
# earlier opsets are refused rather than left to a down-conversion not checked here.
MIN_OPSET = 18
DEFAULT_OPSET = 18


class ExportError(RuntimeError):
    """The exporter cannot convert the graph; the message says what failed."""


def export_onnx(graph: nn.Module,
                example: Tensor,
                path: str,
                output_names: Sequence[str],
                dynamic_axes: Optional[Dict[int, str]] = None,
                opset: int = DEFAULT_OPSET) -> None:
    """Export ``graph`` called on ``example`` (input name ``image``) to ``path`` atomically.

    Args:
        graph (nn.Module): A module taking one tensor, in eval mode.
        example (Tensor): An example input.
        path (str): The .onnx file to write (folders are created).
        output_names (Sequence[str]): One name per output tensor.
        dynamic_axes (dict, optional): Axis -> name of the input's dynamic axes (e.g.
            ``{0: 'batch'}``); the others are fixed to ``example``'s sizes. Defaults to None.
        opset (int): ONNX opset, at least ``MIN_OPSET``. Defaults to ``DEFAULT_OPSET``.

    Raises:
        ValueError: Opset below ``MIN_OPSET``.
        ExportError: The exporter failed; nothing is written.
    """
    if opset < MIN_OPSET:
        raise ValueError(f'--opset {opset}: torch {torch.__version__}\'s ONNX exporter needs '
                         f'opset {MIN_OPSET} or later')
    dynamic_shapes = None
    if dynamic_axes:
        dynamic_shapes = ({axis: torch.export.Dim(name) for axis, name in dynamic_axes.items()}, )
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                graph, (example, ), dynamo=True, input_names=['image'],
                output_names=list(output_names), opset_version=opset,
                dynamic_shapes=dynamic_shapes, verbose=False)
    except Exception as err:  # the exporter raises many types; all mean "cannot export"
        raise ExportError(f'torch.onnx.export failed for {type(graph).__name__}: '
                          f'{first_lines(str(err))}') from err
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix='.onnx', dir=folder)
    os.close(fd)
    try:
        program.save(tmp, external_data=False)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def first_lines(text: str, count: int = 8) -> str:
    """The start of an exporter message, from its exception summary when it has one."""
    summary = text.split('## Exception summary', 1)
    return '\n'.join(summary[-1].strip().splitlines()[:count])


def onnx_session(path: str, threads: int = 0):
    """An onnxruntime CPU session for ``path`` (``threads`` 0: onnxruntime's default)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def run_onnx(session, image: Tensor) -> list:
    """The session's outputs (numpy arrays) for ``image``, in output order."""
    return session.run(None, {'image': image.detach().cpu().numpy()})
