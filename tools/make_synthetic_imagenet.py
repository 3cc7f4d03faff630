"""Write a small, deterministic synthetic classification dataset in mmpretrain's ImageNet layout.

    python tools/make_synthetic_imagenet.py OUT_DIR [--seed 0] [--num-train 12] [--num-val 6]
                                            [--size 64]

Each image is a ``size x size`` JPEG showing one shape of the classes of
``tools/make_synthetic_dataset.py`` (circle, square, triangle: varied size, colour and rotation) on
the same cluttered background; its label is the shape. Classes take turns, so every split holds
each class about equally often. The same seed and arguments give byte-identical files.

Layout (mmpretrain's ``ImageNet`` dataset with annotation files: ``data_root=OUT_DIR``,
``split='train'`` / ``'val'``; labels are class indices, as in ImageNet's ``meta/*.txt``)::

    OUT_DIR/
        classes.txt                  one class per line
        train/train_000001.jpg ...
        val/val_000001.jpg ...
        meta/train.txt               "train_000001.jpg 2" per line
        meta/val.txt

The dataset is written into a temporary sibling of OUT_DIR and renamed into place at the end, so
OUT_DIR is either complete or absent; an existing OUT_DIR is refused (never replaced).
"""
import argparse
import os
import sys
from typing import Dict, Optional, Sequence

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_synthetic_dataset import (CLASSES, JPEG_QUALITY, add_dataset_args,  # noqa: E402
                                    check_dataset_args, cluttered_background, contrasting_colour,
                                    image_rng, shape_mask, write_dataset)


def render_sample(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 BGR image of a ``label`` shape on a cluttered background."""
    image = cluttered_background(rng, size)
    mask = shape_mask(rng, label, size).astype(bool)
    image[mask] = contrasting_colour(rng, image[mask])
    noise = rng.normal(0, rng.uniform(3, 12), size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def generate(out_dir: str, seed: int, counts: Dict[str, int], size: int) -> None:
    """Write the whole dataset into ``out_dir`` (which must exist)."""
    os.makedirs(os.path.join(out_dir, 'meta'))
    for split, count in counts.items():
        os.makedirs(os.path.join(out_dir, split))
        lines = []
        for index in range(1, count + 1):
            label = (index - 1) % len(CLASSES)
            name = f'{split}_{index:06d}.jpg'
            image = render_sample(image_rng(seed, split, index), label, size)
            path = os.path.join(out_dir, split, name)
            if not cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError(f'cannot write {path}')
            lines.append(f'{name} {label}\n')
        with open(os.path.join(out_dir, 'meta', f'{split}.txt'), 'w') as f:
            f.write(''.join(lines))
        print(f'{split}: {count} images')
    with open(os.path.join(out_dir, 'classes.txt'), 'w') as f:
        f.write(''.join(f'{name}\n' for name in CLASSES))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Write a deterministic synthetic classification dataset (circle, square, '
                    'triangle) in mmpretrain\'s ImageNet layout.')
    add_dataset_args(parser, num_train=12, num_val=6, size=64)
    args = parser.parse_args(argv)
    check_dataset_args(parser, args)
    if not args.out_dir.strip():
        parser.error('OUT_DIR is empty; give the directory to create, e.g. data/synthetic_in1k')
    if os.path.lexists(args.out_dir):
        parser.error(f'OUT_DIR {args.out_dir} already exists; give a new directory (this tool '
                     f'never replaces one)')
    args.out_dir = os.path.abspath(args.out_dir)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    write_dataset(parse_args(argv), generate)
    return 0


if __name__ == '__main__':
    sys.exit(main())
