"""The embedded ``digits`` benchmark: built only from data shipped inside installed packages.

ID: scikit-learn's 8×8 handwritten digits, classes 0–4, upsampled to 32×32. Near-OOD: digits 5–9.
Far-OOD and OOD-val: random crops of scikit-image's and scikit-learn's bundled pictures, reduced to
8×8 grey levels 0–16 with the ID pixel mean and standard deviation, then upsampled like the digits,
so only their content differs. Every split is drawn with a fixed seed; nothing is downloaded.

ID images are partitioned per class (seeded): 60 % train, 20 % val, 20 % test. The train part is
split as the NAC authors split a training list (``nac_split.nac_authors_split``, seed: the
benchmark's): ``sanity_per_class`` images per class form ``sub_train`` (the sanity split), the
rest ``main_train``; ``fit`` (NAC's build set) is the first int(1000/K) of each class's
main_train, capped at the smallest class so that it stays class-balanced (96 per class with the
shipped seed); ``train`` is every training image (the official statistics' set). The model is
trained on all of ``train``, as in the NAC protocol.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from oodcache.extract.nac_split import DEFAULT_FIT_SIZE, nac_authors_split

log = logging.getLogger(__name__)

SIDE = 32  # model input side
ID_CLASSES = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class ImageSet:
    """Images (N, 1, 32, 32) float32, normalised with the ID-train mean and std; labels (N,)."""

    images: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    ids: list[str]
    #: per-channel std used to normalise the [0, 1] pixels (ODIN scales its step by 1/std)
    pixel_std: tuple[float, ...] = (0.5,)

    def batches(
        self,
        batch_size: int,
        workers: int = 0,
        *,
        start: int = 0,
        stop: int | None = None,
        pin: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Consecutive batches of rows ``start:stop`` (default: all), in split order."""
        stop = len(self.labels) if stop is None else stop
        for i in range(start, stop, batch_size):
            yield torch.from_numpy(self.images[i : min(i + batch_size, stop)])

    def identity(self, start: int, stop: int) -> str:
        """Hash of the pixels of rows ``start:stop`` (a resumed shard must hold these images)."""
        return hashlib.sha256(np.ascontiguousarray(self.images[start:stop]).data).hexdigest()


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)  # values 0..16


def _picture(name: str) -> np.ndarray:
    """A bundled picture as grey float in [0, 1] (scikit-image data name or 'sklearn:<file>')."""
    from skimage.color import rgb2gray, rgba2rgb

    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(name.split(":", 1)[1])
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = rgba2rgb(img)
    if img.ndim == 3:
        img = rgb2gray(img)
    img = img.astype(np.float64)
    if img.max() > 1.0:
        img = img / 255.0
    return img


def _crops(
    pictures: Sequence[str], count: int, rng: np.random.Generator, mean: float, std: float
) -> np.ndarray:
    """``count`` random square crops (side 16–160 px) reduced to 8×8, matched to ID pixel stats."""
    from skimage.transform import resize

    sources = [_picture(p) for p in pictures]
    out = np.empty((count, 8, 8), np.float32)
    for i in range(count):
        img = sources[i % len(sources)]
        h, w = img.shape
        side = int(rng.integers(16, min(160, h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        small = resize(img[y : y + side, x : x + side], (8, 8), anti_aliasing=True)
        small = (small - small.mean()) / (small.std() + 1e-6) * std + mean
        out[i] = np.clip(small, 0.0, 16.0)
    return out


def _upsample(images8: np.ndarray) -> np.ndarray:
    """(N, 8, 8) grey levels 0–16 → (N, 1, 32, 32) in [0, 1], bilinear."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(images8, dtype=np.float32))[:, None] / 16.0
    return F.interpolate(t, size=(SIDE, SIDE), mode="bilinear", align_corners=False).numpy()


def partition(labels: np.ndarray, seed: int, sanity_per_class: int) -> dict[str, np.ndarray]:
    """Class-balanced, seeded ID partition (module docstring): sorted indices of ``train`` (all
    training images), ``main_train``, ``sub_train``, ``fit``, ``val`` and ``test``."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {
        name: [] for name in ("train", "main_train", "sub_train", "fit", "val", "test")
    }
    mains = []
    for c in ID_CLASSES:
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train, n_val = int(0.6 * len(idx)), int(0.2 * len(idx))
        train, val, test = idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :]
        sub, main = nac_authors_split(sorted(train.tolist()), seed, sanity_per_class)
        parts["train"] += train.tolist()
        parts["sub_train"] += sub
        parts["main_train"] += main
        parts["val"] += val.tolist()
        parts["test"] += test.tolist()
        mains.append(main)
    per_class = min(DEFAULT_FIT_SIZE // len(ID_CLASSES), *(len(m) for m in mains))
    for main in mains:
        parts["fit"] += main[:per_class]
    return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in parts.items()}


def build(
    splits: Mapping[str, Mapping[str, Any]], *, seed: int, options: Mapping[str, Any]
) -> dict[str, ImageSet]:
    """Every split of the benchmark, from its YAML ``source`` entries.

    A source is ``{part: train|main_train|sub_train|fit|val|test}`` (ID digits 0–4), ``{classes: [5, ...]}``
    (all digits of those classes, label -1), or ``{pictures: [...], count: N}`` (crops, label -1).
    """
    images8, labels = _load_digits()
    parts = partition(labels, seed, int(options.get("sanity_per_class", 10)))
    train_idx = parts["train"]
    id_mean, id_std = float(images8[train_idx].mean()), float(images8[train_idx].std())
    up_train = _upsample(images8[train_idx])
    norm_mean, norm_std = float(up_train.mean()), float(up_train.std())

    def finish(img8: np.ndarray, lab: np.ndarray, ids: list[str]) -> ImageSet:
        x = (_upsample(img8) - norm_mean) / norm_std
        return ImageSet(x.astype(np.float32), lab.astype(np.int64), ids, (norm_std,))

    result: dict[str, ImageSet] = {}
    for i, (name, source) in enumerate(splits.items()):
        if "part" in source:
            idx = parts[source["part"]]
            result[name] = finish(images8[idx], labels[idx], [f"digits:{j}" for j in idx])
        elif "classes" in source:
            idx = np.flatnonzero(np.isin(labels, source["classes"]))
            result[name] = finish(
                images8[idx], np.full(len(idx), -1), [f"digits:{j}" for j in idx]
            )
        elif "pictures" in source:
            rng = np.random.default_rng([seed, i])
            count = int(source["count"])
            crops = _crops(source["pictures"], count, rng, id_mean, id_std)
            result[name] = finish(crops, np.full(count, -1), [f"{name}:{j}" for j in range(count)])
        else:
            raise ValueError(
                f"digits split {name!r}: source needs 'part', 'classes' or 'pictures'"
            )
        log.info("digits split %s: %d images", name, len(result[name].labels))
    return result


def training_set(*, seed: int, options: Mapping[str, Any]) -> ImageSet:
    """All ID training images (main_train + sub_train) with their labels, for training the model."""
    return build({"train": {"part": "train"}}, seed=seed, options=options)["train"]
