"""ImageNet (ILSVRC 2012) from class folders of JPEGs: ``imagenet/train/<wnid>/*.JPEG``
and ``imagenet/val/<wnid>/*.JPEG`` (the layout of torchvision's ``ImageFolder``).

Every image is decoded into memory: with the default 224 x 224 crop one image takes
602 KB as float32, so pass ``n_train`` / ``n_test`` (a seeded choice of files, made before
decoding). Needs Pillow (``pip install pillow``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ._base import CorruptDatasetError, Dataset, find

FOLDER = "imagenet"
EXTENSIONS = {".jpeg", ".jpg", ".png"}
HOW_TO_GET = (
    "ImageNet needs a licence: download ILSVRC2012 from https://image-net.org and arrange "
    "it as imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG."
)


def _files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    out = []
    for label, c in enumerate(classes):
        d = folder / c
        if d.is_dir():
            out += [(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in EXTENSIONS]
    return out


def _choose(items: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(items):
        return items
    g = torch.Generator().manual_seed(seed)
    return [items[i] for i in torch.randperm(len(items), generator=g)[:n].sort().values]


def _decode(path: Path, size: int, resize: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize(
                (max(size, round(w * scale)), max(size, round(h * scale))),
                Image.Resampling.BILINEAR,
            )
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptDatasetError(path, f"cannot decode image ({e})") from e


def load_imagenet(
    root: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    image_size: int = 224,
    resize: int = 256,
) -> Dataset:
    """Images resized (shorter side ``resize``, bilinear) and centre-cropped to
    ``image_size``, float32 ``(N, 3, image_size, image_size)``, centred and scaled per
    channel with the mean and standard deviation of the loaded training pixels (in
    [0, 1]); ``meta['classes']`` lists the folder names (label = position)."""
    try:
        import PIL  # noqa: F401
    except ImportError as e:
        raise ImportError("loading ImageNet JPEGs needs Pillow: pip install pillow") from e
    folder = find("ImageNet", [FOLDER], root, HOW_TO_GET)
    train_dir, val_dir = folder / "train", folder / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise CorruptDatasetError(folder, f"missing folder {d.name}/ of class folders")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise CorruptDatasetError(train_dir, "no class folders")
    extra = sorted({p.name for p in val_dir.iterdir() if p.is_dir()} - set(classes))
    if extra:
        raise CorruptDatasetError(val_dir, f"classes absent from train/: {extra[:5]}")
    splits = []
    for d, n in ((train_dir, n_train), (val_dir, n_test)):
        files = _choose(_files(d, classes), n, seed)
        if not files:
            raise CorruptDatasetError(d, "no images (.JPEG, .jpg, .png)")
        x = np.stack([_decode(f, image_size, resize) for f, _ in files])
        splits.append((torch.from_numpy(x).float().div_(255), torch.tensor([y for _, y in files])))
    (x_tr, y_tr), (x_te, y_te) = splits
    mean, std = x_tr.mean(dim=(0, 2, 3)), x_tr.std(dim=(0, 2, 3)).clamp_min(1e-6)
    x_tr = (x_tr - mean[:, None, None]) / std[:, None, None]
    x_te = (x_te - mean[:, None, None]) / std[:, None, None]
    return Dataset(
        "imagenet",
        x_tr,
        y_tr,
        x_te,
        y_te,
        num_classes=len(classes),
        source=str(folder),
        meta={"classes": tuple(classes), "mean": mean.tolist(), "std": std.tolist()},
    )
