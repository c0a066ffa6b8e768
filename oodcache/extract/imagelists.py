"""Image benchmarks from OpenOOD-style image lists or image folders (loader ``imagelist``).

Every split's ``source`` in the benchmark YAML is one of:

- ``{list: <file>, root: <folder>}``: an OpenOOD ``benchmark_imglist`` file, one ``relative/path
  label`` per line (label: an integer or a ``{'label': k}`` literal; OOD splits ignore it), the
  paths relative to ``root``. ``list`` and ``root`` are relative to DATA (``--data``).
- ``{folder: <folder>}``: every image below the folder (sorted, recursive). ID roles need one
  sub-folder per class; their sorted names give the class indices (torchvision ``ImageFolder``).
- ``{subset: fit|sanity|train|holdout, size: N}``: a class-balanced part of the training images
  named by ``options.partition`` (``{list, root}`` or ``{folder}``), drawn per class exactly as
  the NAC authors draw theirs (``nac_authors_split``; seed: the benchmark's ``seed``, 1 in the
  shipped configs as in their code): a fresh ``RandomState(seed)`` shuffle of the class's images
  gives ``sanity`` (the first ``sanity_per_class``, default floor(1000/K): their sub_train) and
  main_train; a second fresh shuffle of main_train orders it, ``fit`` (default 1,000, i.e.
  int(1000/K) per class: their build set) is taken from its start and ``holdout`` from its end.
  ``train`` is the full training list (without the holdout), sanity images included, as the
  official DICE, KNN, ViM, Mahalanobis and LINe statistics use it; a ``size`` takes per class
  the first images of main_train (in that order), then the sanity images. So ``fit`` ⊂ ``train``,
  ``sanity`` ⊂ ``train`` by default, and ``holdout`` is disjoint from all three. (Sizes that K
  does not divide give the first classes one more image; the authors cap every class at the
  smallest class instead.) Each generated subset
  is written as an image list to the run's ``splits/`` folder (``<split>.txt``), and an existing
  list that differs is an error.

A malformed line, a duplicate path, a path leaving its root, a missing file or an undecodable image raises
``ImageListError`` naming the file and line. With ``skip_bad`` (benchmark option or ``extract``
argument) missing and undecodable images are skipped instead and recorded in
``splits/<split>.skipped.txt``; malformed lines and escaping paths always raise.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import math
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as tdist
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from oodcache.cache.schema import ID_ROLES
from oodcache.config import BenchmarkConfig, ConfigError
from oodcache.extract.nac_split import DEFAULT_FIT_SIZE, nac_authors_split
from oodcache.extract.transforms import Preprocess, load_rgb
from oodcache.files import atomic_write_text

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif",
)  # fmt: skip
SUBSETS = ("fit", "sanity", "train", "holdout")
#: longest image-list line read (a path and a label; OpenOOD's are under 200 bytes)
MAX_LIST_LINE = 4096
SOURCE_KEYS = {"list": {"list", "root"}, "folder": {"folder"}, "subset": {"subset", "size"}}
PARTITION_KEYS = {"list", "root", "folder", "sanity_per_class"}


class ImageListError(ValueError):
    """A bad image list line, a path leaving the data root, or a missing or unreadable image."""


@dataclass(frozen=True)
class Item:
    """One image: its path relative to the split's root, its label (-1: OOD) and where it was
    declared (``list.txt:17`` or ``folder <path>``), for error messages."""

    path: str
    label: int
    origin: str


def safe_relative(rel: str, origin: str) -> str:
    """``rel`` normalised, refusing absolute paths and paths that leave their root."""
    if not rel or "\x00" in rel:
        raise ImageListError(f"{origin}: empty or invalid image path {rel!r}")
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if (
        posixpath.isabs(norm)
        or (len(norm) > 1 and norm[1] == ":")
        or norm == ".."
        or norm.startswith("../")
    ):
        raise ImageListError(
            f"{origin}: image path {rel!r} leaves the data root; list paths must be relative "
            "and stay inside it"
        )
    return norm


def _label(extra: str, origin: str) -> int | None:
    """The label field of a list line: an int, a ``{'label': k}`` literal, or nothing."""
    extra = extra.strip()
    if not extra:
        return None
    try:
        return int(extra)
    except ValueError:
        pass
    try:
        value = ast.literal_eval(extra)
    except (ValueError, SyntaxError):
        value = None
    if isinstance(value, dict) and isinstance(value.get("label"), int):
        return int(value["label"])
    raise ImageListError(
        f"{origin}: malformed line: expected 'relative/path label' with an integer label, "
        f"got label field {extra!r}"
    )


def read_list(list_file: Path, *, is_id: bool, num_classes: int) -> list[Item]:
    """Parse an OpenOOD image list (``path label`` per line; blank and ``#`` lines skipped).
    Only a regular file is read (not a device or FIFO behind a symlink), lines of at most
    ``MAX_LIST_LINE`` bytes, UTF-8; an error names the file and line."""
    items: list[Item] = []
    seen: dict[str, str] = {}
    if not list_file.resolve().is_file():
        raise ImageListError(f"{list_file}: not a regular file (an image list is a text file)")
    with list_file.open("rb") as fh:
        for lineno, data in enumerate(iter(lambda: fh.readline(MAX_LIST_LINE + 1), b""), 1):
            if len(data) > MAX_LIST_LINE:
                raise ImageListError(
                    f"{list_file}:{lineno}: a line longer than {MAX_LIST_LINE} bytes; not an "
                    "image list"
                )
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ImageListError(
                    f"{list_file}:{lineno}: not UTF-8 text ({err.reason} at byte {err.start})"
                ) from None
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            origin = f"{list_file}:{lineno}"
            path, _, extra = line.strip().partition(" ")
            parsed = _label(extra, origin)
            label = -1
            if is_id:
                if parsed is None:
                    raise ImageListError(f"{origin}: malformed line: no label after {path!r}")
                if not 0 <= parsed < num_classes:
                    raise ImageListError(
                        f"{origin}: label {parsed} outside 0..{num_classes - 1} for an ID split"
                    )
                label = parsed
            rel = safe_relative(path, origin)
            if rel in seen:
                raise ImageListError(
                    f"{origin}: duplicate image path {rel!r} (already listed at {seen[rel]}); "
                    "an image counted twice would weigh twice in every statistic"
                )
            seen[rel] = origin
            items.append(Item(rel, label, origin))
    return items


def _images_below(folder: Path) -> list[str]:
    """Image files below ``folder`` (sorted, symlinks followed); a folder reached twice (a symlink
    loop or two links to one folder) is walked once, so no image is counted twice."""
    out: list[str] = []
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in visited:
            dirnames.clear()
            continue
        visited.add((st.st_dev, st.st_ino))
        dirnames.sort()
        rel = os.path.relpath(dirpath, folder)
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                out.append(name if rel == "." else posixpath.join(Path(rel).as_posix(), name))
    return out


def scan_folder(folder: Path, *, is_id: bool, num_classes: int) -> list[Item]:
    """Images below ``folder``; for ID roles one sub-folder per class (sorted names = indices)."""
    origin = f"folder {folder}"
    if not is_id:
        return [Item(p, -1, origin) for p in _images_below(folder)]
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(classes) != num_classes:
        raise ImageListError(
            f"{origin}: an ID folder needs one sub-folder per class ({num_classes}), "
            f"found {len(classes)}"
        )
    return [
        Item(posixpath.join(c, p), k, f"{origin}/{c}")
        for k, c in enumerate(classes)
        for p in _images_below(folder / c)
    ]


def _per_class(total: int, k: int) -> list[int]:
    base, extra = divmod(total, k)
    return [base + (1 if c < extra else 0) for c in range(k)]


def partition(
    items: list[Item],
    num_classes: int,
    *,
    seed: int,
    sanity_per_class: int,
    sizes: Mapping[str, int | None],
) -> dict[str, list[Item]]:
    """Class-balanced seeded subsets of the training images (see the module docstring).

    ``sizes`` maps each requested subset to its total size (``None``: the default).
    """
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, it in enumerate(items):
        by_class[it.label].append(i)
    holdout = _per_class(int(sizes.get("holdout") or 0), num_classes)
    out: dict[str, list[int]] = {name: [] for name in sizes}
    short: list[str] = []
    for c, members in enumerate(by_class):
        sanity, main = nac_authors_split(members, seed, sanity_per_class)
        h = min(holdout[c], len(main))
        if "sanity" in out:
            out["sanity"] += sanity
        if "holdout" in out:
            out["holdout"] += main[len(main) - h :]
        main = main[: len(main) - h]
        for name in ("fit", "train"):
            if name in out:
                # fit: NAC's build set, from main_train; train: the full training list
                pool = main if name == "fit" else main + sanity
                size = sizes[name]
                if size is None and name == "fit":
                    size = DEFAULT_FIT_SIZE
                want = len(pool) if size is None else _per_class(int(size), num_classes)[c]
                if want > len(pool):
                    short.append(f"{name} class {c}: {len(pool)} of {want}")
                out[name] += pool[:want]
    if short:
        log.warning("too few training images for a balanced subset: %s", "; ".join(short[:10]))
    return {name: [items[i] for i in sorted(idx)] for name, idx in out.items()}


def write_list(path: Path, items: list[Item], header: str) -> None:
    """Write ``items`` as an image list; a different existing list is an error (frozen splits)."""
    text = "".join(f"# {line}\n" for line in header.splitlines())
    text += "".join(f"{it.path} {it.label}\n" for it in items)
    if path.is_file():
        if path.read_text(encoding="utf-8") == text:
            return
        raise ImageListError(
            f"{path} exists and differs from the split generated now (the training list, seed or "
            "sizes changed); delete it to regenerate, or restore the inputs it was made from"
        )
    atomic_write_text(path, text)
    log.info("wrote split list %s (%d images)", path, len(items))


class _Images(Dataset[torch.Tensor]):
    def __init__(self, root: Path, items: list[Item], preprocess: Preprocess | None) -> None:
        self.root, self.items, self.preprocess = root, items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        it = self.items[i]
        path = self.root / it.path
        try:
            img = load_rgb(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageListError(f"{it.origin}: cannot read image {path}: {exc}") from None
        if self.preprocess is None:  # decode check only
            return torch.zeros(())
        return self.preprocess.transform(img)


class _Probe(Dataset[tuple[int, str]]):
    """Decode-only pass for ``skip_bad``: (index, error text or '')."""

    def __init__(self, images: _Images) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, str]:
        try:
            self.images[i]
        except ImageListError as exc:
            return i, str(exc).split(": cannot read image ", 1)[-1]
        return i, ""


def _as_list(batch: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return batch


@dataclass
class ImageSplit:
    """One split of an image benchmark; satisfies ``SplitSource``."""

    name: str
    root: Path
    items: list[Item]
    preprocess: Preprocess
    #: (origin, path, reason) of every skipped image
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._labels = np.asarray([it.label for it in self.items], dtype=np.int64)
        self._labels.flags.writeable = False

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return self._labels

    @property
    def pixel_std(self) -> tuple[float, ...]:
        return self.preprocess.std

    def identity(self, start: int, stop: int) -> str:
        """Hash of the paths, sizes and modification times of the image files of rows
        ``start:stop``: a resumed shard must have been made from these very files."""
        h = hashlib.sha256()
        for it in self.items[start:stop]:
            st = (self.root / it.path).stat()
            h.update(f"{it.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def batches(
        self,
        batch_size: int,
        workers: int = 0,
        *,
        start: int = 0,
        stop: int | None = None,
        pin: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Normalised (B, 3, H, W) batches of rows ``start:stop`` (default: all) in list order,
        decoded by ``workers`` processes; into pinned memory with ``pin`` (a CUDA extraction:
        pinning on a CPU run would create CUDA contexts for nothing)."""
        stop = len(self.items) if stop is None else stop
        loader = DataLoader(
            _Images(self.root, self.items[start:stop], self.preprocess),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=pin,
        )
        yield from loader


def _resolve(data: Path, rel: str, what: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else data / safe_relative(rel, what)


def _check_source(name: str, source: Mapping[str, Any], cfg: BenchmarkConfig, is_id: bool) -> str:
    kinds = [k for k in SOURCE_KEYS if k in source]
    where = f"benchmark {cfg.name}, split {name!r}"
    if len(kinds) != 1:
        raise ConfigError(f"{where}: source needs exactly one of {list(SOURCE_KEYS)}")
    kind = kinds[0]
    if unknown := sorted(set(source) - SOURCE_KEYS[kind]):
        raise ConfigError(
            f"{where}: unknown source keys {unknown}; allowed {sorted(SOURCE_KEYS[kind])}"
        )
    if kind == "subset":
        if source["subset"] not in SUBSETS:
            raise ConfigError(f"{where}: subset must be one of {list(SUBSETS)}")
        if not is_id:
            raise ConfigError(f"{where}: a training subset cannot have an OOD role")
        if "partition" not in cfg.options:
            raise ConfigError(
                f"{where}: subset sources need options.partition (the training list)"
            )
        size = source.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ConfigError(f"{where}: size must be a positive integer, got {size!r}")
    return kind


def required_paths(cfg: BenchmarkConfig, data: Path) -> list[Path]:
    """Every list file and image folder the benchmark reads, under ``data``."""
    paths: list[Path] = []
    specs: list[Mapping[str, Any]] = [s.source for s in cfg.splits.values()]
    if isinstance(cfg.options.get("partition"), dict):
        specs.append(cfg.options["partition"])
    for src in specs:
        for key in ("list", "root", "folder"):
            if key in src and _resolve(data, str(src[key]), f"benchmark {cfg.name}") not in paths:
                paths.append(_resolve(data, str(src[key]), f"benchmark {cfg.name}"))
    return paths


def missing_data(cfg: BenchmarkConfig, data: Path | None) -> list[str]:
    """Human-readable lines for every missing DATA path (empty when all exist)."""
    if data is None:
        need = ", ".join(str(p) for p in required_paths(cfg, Path("DATA")))
        return [
            f"benchmark {cfg.name} reads images from a data root: pass --data DATA (make: "
            f"DATA=...) holding {need}"
        ]
    missing = [p for p in required_paths(cfg, data) if not p.exists()]
    return [
        f"benchmark {cfg.name}: missing {'folder' if p.suffix == '' else 'file'} {p} "
        f"(under DATA={data}; see the README section for {cfg.name})"
        for p in missing
    ]


def _items(
    src: Mapping[str, Any], data: Path, *, is_id: bool, k: int, where: str
) -> tuple[Path, list[Item]]:
    if "list" in src:
        root = _resolve(data, str(src.get("root", ".")), where)
        return root, read_list(_resolve(data, str(src["list"]), where), is_id=is_id, num_classes=k)
    folder = _resolve(data, str(src["folder"]), where)
    return folder, scan_folder(folder, is_id=is_id, num_classes=k)


Skipped = list[tuple[str, str, str]]


def _drop_missing(root: Path, items: list[Item], skip_bad: bool) -> tuple[list[Item], Skipped]:
    kept: list[Item] = []
    skipped: Skipped = []
    for it in items:
        path = root / it.path
        if path.is_file():
            kept.append(it)
        elif skip_bad:
            skipped.append((it.origin, str(path), "missing file"))
        else:
            raise ImageListError(
                f"{it.origin}: image file not found: {path} (fix the list or the data root, or "
                "set skip_bad to skip and record missing images)"
            )
    return kept, skipped


def _drop_undecodable(root: Path, items: list[Item], workers: int) -> tuple[list[Item], Skipped]:
    """Decode every image once (skip_bad only) and drop those that fail. Under torchrun each rank
    decodes every W-th image and the ranks share what failed (``all_gather_object``), so the work
    is done once in all, not once per rank, and every rank drops the same images."""
    rank, world = 0, 1
    if tdist.is_available() and tdist.is_initialized():
        rank, world = tdist.get_rank(), tdist.get_world_size()
    mine = list(range(rank, len(items), world))
    probe = _Probe(_Images(root, [items[i] for i in mine], None))
    loader = DataLoader(probe, batch_size=64, num_workers=workers, collate_fn=_as_list)
    found: dict[int, str] = {}
    for batch in loader:
        found.update((mine[i], err) for i, err in batch if err)
    bad = found
    if world > 1:
        shared: list[dict[int, str] | None] = [None] * world
        tdist.all_gather_object(shared, found)
        bad = {i: err for part in shared if part for i, err in part.items()}
    skipped = [(items[i].origin, str(root / items[i].path), err) for i, err in sorted(bad.items())]
    return [it for i, it in enumerate(items) if i not in bad], skipped


def load_imagelists(
    cfg: BenchmarkConfig,
    data: Path | None,
    *,
    preprocess: Preprocess,
    splits_dir: Path | None = None,
    skip_bad: bool | None = None,
    workers: int = 0,
) -> dict[str, ImageSplit]:
    """Every split of an ``imagelist`` benchmark (see the module docstring)."""
    if missing := missing_data(cfg, data):
        raise ImageListError("\n".join(missing))
    assert data is not None
    skip = bool(cfg.options.get("skip_bad", False) if skip_bad is None else skip_bad)
    k = cfg.num_classes
    kinds = {
        name: _check_source(name, spec.source, cfg, spec.role in ID_ROLES)
        for name, spec in cfg.splits.items()
    }
    subsets: dict[str, list[Item]] = {}
    part_root = data
    if "subset" in kinds.values():
        part = dict(cfg.options["partition"])
        if unknown := sorted(set(part) - PARTITION_KEYS):
            raise ConfigError(f"benchmark {cfg.name}: unknown options.partition keys {unknown}")
        where = f"benchmark {cfg.name} options.partition"
        part_root, train_items = _items(part, data, is_id=True, k=k, where=where)
        sanity = part.get("sanity_per_class")
        if sanity is not None and (
            not isinstance(sanity, int) or isinstance(sanity, bool) or sanity < 0
        ):
            raise ConfigError(
                f"benchmark {cfg.name}: options.partition.sanity_per_class must be an integer "
                f">= 0, got {sanity!r}"
            )
        sanity_per_class = math.floor(1000 / k) if sanity is None else sanity
        sizes: dict[str, int | None] = {}
        for name, spec in cfg.splits.items():
            if kinds[name] == "subset":
                sub = str(spec.source["subset"])
                if sub in sizes and sizes[sub] != spec.source.get("size"):
                    raise ConfigError(f"benchmark {cfg.name}: subset {sub!r} declared twice")
                sizes[sub] = spec.source.get("size")
        subsets = partition(
            train_items, k, seed=cfg.seed, sanity_per_class=sanity_per_class, sizes=sizes
        )
        log.info(
            "partition of %d training images (seed %d, sanity %d/class): %s",
            len(train_items),
            cfg.seed,
            sanity_per_class,
            {n: len(v) for n, v in subsets.items()},
        )
    out: dict[str, ImageSplit] = {}
    for name, spec in cfg.splits.items():
        src = spec.source
        is_id = spec.role in ID_ROLES
        if kinds[name] == "subset":
            root, items = part_root, subsets[str(src["subset"])]
            if splits_dir is not None:
                part = cfg.options["partition"]
                origin = part.get("list", part.get("folder"))
                header = (
                    f"oodcache benchmark {cfg.name}, split {name}: subset {src['subset']!r} of "
                    f"{origin} (paths relative to {part.get('root', part.get('folder', '.'))})\n"
                    f"per-class shuffle seed {cfg.seed}, size {src.get('size')}, "
                    f"{len(items)} images"
                )
                write_list(splits_dir / f"{name}.txt", items, header)
        else:
            root, items = _items(src, data, is_id=is_id, k=k, where=f"benchmark {cfg.name}")
        items, skipped = _drop_missing(root, items, skip)
        if skip:
            items, undecodable = _drop_undecodable(root, items, workers)
            skipped += undecodable
        split = ImageSplit(name, root, items, preprocess, skipped=skipped, source=dict(src))
        if split.skipped:
            log.warning("split %s: skipped %d bad images", name, len(split.skipped))
            if splits_dir is not None:
                splits_dir.mkdir(parents=True, exist_ok=True)
                (splits_dir / f"{name}.skipped.txt").write_text(
                    "".join(f"{o}\t{p}\t{r}\n" for o, p, r in split.skipped), encoding="utf-8"
                )
        if not split.items:
            raise ImageListError(f"benchmark {cfg.name}: split {name!r} has no images ({src})")
        out[name] = split
        log.info("split %s (%s): %d images from %s", name, spec.role, len(split.items), src)
    return out
