"""Image benchmarks: OpenOOD image lists and folders under DATA, robust decoding, the seeded
class-balanced fit/sanity/train/holdout partition, frozen generated lists, and clear errors
(file and line) for malformed lines, missing files, corrupt images and paths leaving the root.

The helpers here also build the tiny image trees that ``test_archs.py`` extracts from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from oodcache.cache.schema import ID_ROLES
from oodcache.config import BenchmarkConfig, MissingFileError, load_arch, load_benchmark
from oodcache.extract.data import load_splits
from oodcache.extract.imagelists import ImageListError, ImageSplit, Item, partition, read_list
from oodcache.extract.transforms import build_preprocess, load_rgb

#: image kinds cycled through every generated tree (grey, RGBA, 16-bit, palette, CMYK JPEG)
KINDS = ("rgb_png", "jpeg", "grey", "rgba", "grey16", "palette_alpha", "cmyk_jpeg")


def save_image(path: Path, kind: str, seed: int, size: tuple[int, int] = (14, 11)) -> None:
    """A small random image of the given kind at ``path`` (parents created)."""
    rng = np.random.default_rng(seed)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "rgb_png":
        Image.fromarray(rgb, "RGB").save(path, format="PNG")
    elif kind == "jpeg":
        Image.fromarray(rgb, "RGB").save(path, format="JPEG")
    elif kind == "grey":
        Image.fromarray(rgb[..., 0], "L").save(path, format="PNG")
    elif kind == "rgba":
        rgba = np.concatenate([rgb, rng.integers(0, 256, (h, w, 1), dtype=np.uint8)], axis=2)
        Image.fromarray(rgba, "RGBA").save(path, format="PNG")
    elif kind == "grey16":
        arr = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        Image.fromarray(arr).save(path, format="PNG")
    elif kind == "palette_alpha":
        img = Image.fromarray(rgb, "RGB").quantize(colors=8)
        img.info["transparency"] = 0
        img.save(path, format="PNG", transparency=0)
    elif kind == "cmyk_jpeg":
        Image.fromarray(rgb, "RGB").convert("CMYK").save(path, format="JPEG")
    else:
        raise ValueError(kind)


def write_list(path: Path, entries: Iterable[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p} {lab}\n" for p, lab in entries))


def build_tree(
    cfg: BenchmarkConfig,
    data: Path,
    *,
    classes: Iterable[int] = (0, 1, 2, 3),
    per_class: int = 3,
    n_ood: int = 3,
) -> None:
    """Create every list file and image folder ``cfg`` reads, under ``data``: ID lists and folders
    with ``per_class`` images of each of ``classes``, OOD ones with ``n_ood`` images."""
    classes = list(classes)
    counter = iter(range(10**6))
    specs: list[tuple[dict[str, Any], bool]] = [
        (dict(s.source), s.role in ID_ROLES) for s in cfg.splits.values()
    ]
    if "partition" in cfg.options:
        specs.append((dict(cfg.options["partition"]), True))
    for src, is_id in specs:
        if "list" in src:
            root = data / src.get("root", ".")
            stem = Path(src["list"]).stem
            entries = []
            labels = [c for c in classes for _ in range(per_class)] if is_id else [-1] * n_ood
            for j, lab in enumerate(labels):
                i = next(counter)
                kind = KINDS[i % len(KINDS)]
                ext = ".jpg" if "jpeg" in kind else ".png"
                rel = f"{stem}/c{max(lab, 0)}/img{j}{ext}"
                save_image(root / rel, kind, seed=i)
                entries.append((rel, lab))
            write_list(data / src["list"], entries)
        elif "folder" in src:
            folder = data / src["folder"]
            if is_id:
                for k in range(cfg.num_classes):
                    for j in range(per_class if k in classes else 1):
                        i = next(counter)
                        save_image(folder / f"n{k:08d}" / f"img{j}.png", KINDS[i % 3], seed=i)
            else:
                for j in range(n_ood):
                    i = next(counter)
                    sub = "nested/deeper" if j % 2 else "."
                    save_image(folder / sub / f"ood{j}.jpg", "jpeg", seed=i)


def shrink(
    cfg: BenchmarkConfig, *, sanity: int = 1, fit: int = 4, train: int | None = 6
) -> BenchmarkConfig:
    """The same benchmark with small partition sizes (so a few images per class suffice)."""
    options = dict(cfg.options)
    options.pop("odin_grid", None)
    if "partition" in options:
        options["partition"] = {**options["partition"], "sanity_per_class": sanity}
    splits = {}
    for name, spec in cfg.splits.items():
        src = dict(spec.source)
        if src.get("subset") == "fit":
            src["size"] = fit
        elif src.get("subset") == "train":
            src["size"] = train
        elif src.get("subset") == "holdout":
            src["size"] = 2
        splits[name] = dataclasses.replace(spec, source=src)
    return dataclasses.replace(cfg, options=options, splits=splits)


def small_preprocess(arch: str, bench: BenchmarkConfig, size: int = 16) -> Any:
    return build_preprocess(dataclasses.replace(load_arch(arch), input_size=size), bench)


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_image_mode_decodes_to_8_bit_rgb(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"img.{'jpg' if 'jpeg' in kind else 'png'}"
    save_image(path, kind, seed=3)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (14, 11)
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (11, 14, 3)
    with Image.open(path) as raw:
        if kind in ("grey", "grey16"):
            assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
        if kind == "grey16":  # scaled from 16 bits, not clipped at 255
            expected = np.rint(np.asarray(raw, dtype=np.float64) / 65535 * 255)
            np.testing.assert_array_equal(arr[..., 0], expected.astype(np.uint8))
            assert arr.max() > 200 and arr.min() < 50
        if kind == "rgba":  # alpha dropped, colour kept (OpenOOD's convert('RGB'))
            np.testing.assert_array_equal(arr, np.asarray(raw)[..., :3])
        if kind == "palette_alpha":
            np.testing.assert_array_equal(arr, np.asarray(raw.convert("RGBA"))[..., :3])


def test_16_bit_extremes_map_to_0_and_255(tmp_path: Path) -> None:
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g.png")
    got = np.asarray(load_rgb(tmp_path / "g.png"))[0, :, 0]
    np.testing.assert_array_equal(got, [0, 1, 128, 255])


# --- the real benchmark configs on fake OpenOOD trees --------------------------------------------


@pytest.mark.parametrize(
    ("bench", "arch"),
    [
        ("cifar10", "resnet18_32x32"),
        ("cifar100", "resnet18_32x32"),
        ("imagenet200", "resnet18_224x224"),
        ("imagenet", "resnet50"),
    ],
)
def test_openood_benchmarks_read_their_image_lists(bench: str, arch: str, tmp_path: Path) -> None:
    cfg = shrink(load_benchmark(bench))
    data = tmp_path / "data"
    build_tree(cfg, data)
    # OpenOOD's layout: lists under benchmark_imglist/<bench>/, images under images_* roots
    lists = sorted(p.name for p in (data / "benchmark_imglist" / bench).iterdir())
    assert f"train_{bench}.txt" in lists and f"test_{bench}.txt" in lists
    large = bench.startswith("imagenet")
    assert (data / ("images_largescale" if large else "images_classic")).is_dir()
    if large:  # Textures is read from images_classic even for the ImageNet benchmarks
        assert cfg.splits["textures"].source["root"] == "images_classic"
        assert cfg.splits["ood_val"].source["list"].endswith("val_openimage_o.txt")
    else:
        assert cfg.splits["ood_val"].source["list"].endswith("val_tin.txt")
    splits_dir = tmp_path / "run" / "splits"
    pre = small_preprocess(arch, cfg)
    sets = load_splits(cfg, data, preprocess=pre, splits_dir=splits_dir)
    assert list(sets) == list(cfg.splits)
    roles = Counter(spec.role for spec in cfg.splits.values())
    assert roles["near"] == 2 and roles["far"] == (4 if not large else 3)
    for name, split in sets.items():
        assert isinstance(split, ImageSplit)
        if cfg.splits[name].role in ID_ROLES:
            assert set(split.labels) <= {0, 1, 2, 3}
        else:
            assert (split.labels == -1).all()
        x = next(split.batches(5))
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 16, 16)
        assert torch.isfinite(x).all()
    fit, sanity, train = (set(sets[n].items) for n in ("fit", "sanity", "train"))
    assert fit <= train and not (sanity & fit)
    assert len(sanity) == 4 and len(fit) == 4  # one sanity image per class; fit 4 = 1 per class
    header = (splits_dir / "fit.txt").read_text().splitlines()[0]
    assert header.startswith("# oodcache benchmark") and f"train_{bench}.txt" in header
    # the written lists are readable image lists of the same images
    again = read_list(splits_dir / "fit.txt", is_id=True, num_classes=cfg.num_classes)
    assert [(i.path, i.label) for i in again] == [(i.path, i.label) for i in sets["fit"].items]


def test_imagenet_classic_reads_class_folders_and_ood_folders(tmp_path: Path) -> None:
    cfg = shrink(dataclasses.replace(load_benchmark("imagenet_classic"), num_classes=3))
    data = tmp_path / "data"
    build_tree(cfg, data, classes=(0, 1, 2), per_class=4, n_ood=4)
    sets = load_splits(cfg, data, preprocess=small_preprocess("resnet50", cfg))
    test = sets["id_test"]
    assert isinstance(test, ImageSplit)
    # class index = position of the sorted wnid folder (torchvision ImageFolder order)
    assert {(Path(i.path).parts[0], i.label) for i in test.items} == {
        ("n00000000", 0),
        ("n00000001", 1),
        ("n00000002", 2),
    }
    inat = sets["inaturalist"]
    assert isinstance(inat, ImageSplit)
    assert sorted(i.path for i in inat.items) == [
        "nested/deeper/ood1.jpg",
        "nested/deeper/ood3.jpg",
        "ood0.jpg",
        "ood2.jpg",
    ]
    parts = {n: set(sets[n].items) for n in ("fit", "sanity", "train", "id_val")}  # type: ignore[attr-defined]
    assert not (parts["id_val"] & (parts["fit"] | parts["train"] | parts["sanity"]))
    assert parts["fit"] <= parts["train"] and len(parts["id_val"]) == 2


def test_folder_with_wrong_class_count_is_refused(tmp_path: Path) -> None:
    cfg = shrink(dataclasses.replace(load_benchmark("imagenet_classic"), num_classes=3))
    data = tmp_path / "data"
    build_tree(cfg, data, classes=(0, 1, 2))
    (data / "ILSVRC-2012" / "val" / "n00000002").rename(data / "ILSVRC-2012" / "val.n2")
    with pytest.raises(ImageListError, match=r"ILSVRC-2012/val.*one sub-folder per class \(3\)"):
        load_splits(cfg, data, preprocess=small_preprocess("resnet50", cfg))


# --- the partition ---


def _items(k: int, per_class: int) -> list[Item]:
    return [Item(f"c{c}/{j}.png", c, f"l:{c}") for c in range(k) for j in range(per_class)]


def test_partition_is_class_balanced_seeded_and_disjoint() -> None:
    items = _items(4, 20)
    sizes = {"fit": 8, "sanity": None, "train": None, "holdout": 4}
    p = partition(items, 4, seed=1, sanity_per_class=3, sizes=sizes)
    per_class = {n: Counter(i.label for i in v) for n, v in p.items()}
    assert per_class["sanity"] == {0: 3, 1: 3, 2: 3, 3: 3}
    assert per_class["fit"] == {0: 2, 1: 2, 2: 2, 3: 2}
    assert per_class["holdout"] == {0: 1, 1: 1, 2: 1, 3: 1}
    assert per_class["train"] == {0: 19, 1: 19, 2: 19, 3: 19}  # the full list less the holdout
    sets = {n: set(v) for n, v in p.items()}
    assert sets["fit"] <= sets["train"] and sets["sanity"] <= sets["train"]
    assert not sets["sanity"] & (sets["fit"] | sets["holdout"])
    assert not sets["holdout"] & sets["train"]
    assert sets["train"] | sets["holdout"] == set(items)
    # seeded: same seed, same split; the shuffle is per class (not the list's first images)
    assert p == partition(items, 4, seed=1, sanity_per_class=3, sizes=sizes)
    other = partition(items, 4, seed=2, sanity_per_class=3, sizes=sizes)
    assert set(other["sanity"]) != sets["sanity"]
    firsts = {i for i in items if int(Path(i.path).stem) < 3}
    assert sets["sanity"] != firsts
    # fit defaults to 1,000 (here capped by main_train), train size is honoured
    q = partition(items, 4, seed=1, sanity_per_class=3, sizes={"fit": None, "train": 6})
    assert len(q["fit"]) == 4 * 17 and Counter(i.label for i in q["train"]) == {
        0: 2,
        1: 2,
        2: 1,
        3: 1,
    }


def test_generated_lists_are_frozen(tmp_path: Path) -> None:
    cfg = shrink(load_benchmark("cifar10"))
    data = tmp_path / "data"
    build_tree(cfg, data, per_class=4)
    pre = small_preprocess("resnet18_32x32", cfg)
    run = tmp_path / "splits"
    load_splits(cfg, data, preprocess=pre, splits_dir=run)
    before = (run / "fit.txt").read_text()
    load_splits(cfg, data, preprocess=pre, splits_dir=run)  # same inputs: accepted
    assert (run / "fit.txt").read_text() == before
    with pytest.raises(ImageListError, match=r"fit\.txt exists and differs"):
        load_splits(dataclasses.replace(cfg, seed=7), data, preprocess=pre, splits_dir=run)


# --- errors that name the file and line ---


def _custom(
    tmp_path: Path, lines: list[str], *, role: str = "id_val"
) -> tuple[BenchmarkConfig, Path, Path]:
    """A one-split user benchmark (a YAML file, no code) reading ``lines`` as its image list."""
    data = tmp_path / "data"
    for j in range(3):
        save_image(data / "imgs" / f"ok{j}.png", "rgb_png", seed=j)
    (data / "lists").mkdir(parents=True, exist_ok=True)
    list_file = data / "lists" / "split.txt"
    list_file.write_text("".join(line + "\n" for line in lines))
    yaml_file = tmp_path / "custom.yaml"
    yaml_file.write_text(
        "name: custom\nloader: imagelist\nnum_classes: 3\n"
        "options:\n  preprocess: {resize: 8, crop: 8, mean: [0.5, 0.5, 0.5], "
        "std: [0.25, 0.25, 0.25]}\nsplits:\n"
        f"  s: {{role: {role}, dataset: mine, source: {{list: lists/split.txt, root: imgs}}}}\n"
    )
    return load_benchmark(str(yaml_file)), data, list_file


def _load(cfg: BenchmarkConfig, data: Path, **kw: Any) -> ImageSplit:
    pre = build_preprocess(dataclasses.replace(load_arch("resnet18_32x32"), input_size=8), cfg)
    split = load_splits(cfg, data, preprocess=pre, **kw)["s"]
    assert isinstance(split, ImageSplit)
    return split


def test_user_benchmark_from_a_yaml_file(tmp_path: Path) -> None:
    cfg, data, _ = _custom(tmp_path, ["ok0.png 2", "", "# a comment", "ok1.png {'label': 1}"])
    split = _load(cfg, data)
    assert split.labels.tolist() == [2, 1]
    assert next(split.batches(4)).shape == (2, 3, 8, 8)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ok1.png notalabel", "malformed line.*'notalabel'"),
        ("ok1.png", "malformed line: no label"),
        ("ok1.png 3", "label 3 outside 0..2"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    cfg, data, list_file = _custom(tmp_path, ["ok0.png 0", "", line])
    with pytest.raises(ImageListError, match=rf"{list_file}:3: {message}"):
        _load(cfg, data)


def test_ood_lists_ignore_labels_but_not_garbage(tmp_path: Path) -> None:
    cfg, data, _ = _custom(tmp_path, ["ok0.png 5", "ok1.png"], role="far")
    assert _load(cfg, data).labels.tolist() == [-1, -1]
    cfg, data, list_file = _custom(tmp_path / "b", ["ok0.png 0", "ok1.png x y"], role="far")
    with pytest.raises(ImageListError, match=rf"{list_file}:2: malformed"):
        _load(cfg, data)


def test_missing_file_names_file_and_line_or_is_skipped(tmp_path: Path) -> None:
    cfg, data, list_file = _custom(tmp_path, ["ok0.png 0", "gone.png 1", "ok2.png 2"])
    with pytest.raises(ImageListError, match=rf"{list_file}:2: image file not found: .*gone\.png"):
        _load(cfg, data)
    run = tmp_path / "run"
    split = _load(cfg, data, skip_bad=True, splits_dir=run)
    assert split.labels.tolist() == [0, 2]
    assert [(o, r) for o, _, r in split.skipped] == [(f"{list_file}:2", "missing file")]
    assert "gone.png" in (run / "s.skipped.txt").read_text()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_file_and_line_or_is_skipped(tmp_path: Path, damage: str) -> None:
    cfg, data, list_file = _custom(tmp_path, ["ok0.png 0", "ok1.png 1", "bad.png 2"])
    bad = data / "imgs" / "bad.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not an image at all")
    else:
        save_image(bad, "rgb_png", seed=9, size=(64, 64))
        bad.write_bytes(bad.read_bytes()[:200])
    split = _load(cfg, data)  # lists and files are fine; decoding fails during extraction
    with pytest.raises(ImageListError, match=rf"{list_file}:3: cannot read image .*bad\.png"):
        list(split.batches(2))
    skipped = _load(cfg, data, skip_bad=True)
    assert skipped.labels.tolist() == [0, 1]
    assert skipped.skipped[0][0] == f"{list_file}:3" and "bad.png" in skipped.skipped[0][1]
    assert next(skipped.batches(4)).shape[0] == 2


@pytest.mark.parametrize("entry", ["../outside.png", "/etc/passwd", "a/../../outside.png", ".."])
def test_paths_leaving_the_root_are_refused_even_with_skip_bad(tmp_path: Path, entry: str) -> None:
    cfg, data, list_file = _custom(tmp_path, ["ok0.png 0", f"{entry} 1"])
    save_image(data / "outside.png", "rgb_png", seed=1)  # it exists, and is still refused
    for skip in (False, True):
        with pytest.raises(ImageListError, match=rf"{list_file}:2: .*leaves the data root"):
            _load(cfg, data, skip_bad=skip)


def test_yaml_paths_may_not_leave_data_either(tmp_path: Path) -> None:
    cfg, data, _ = _custom(tmp_path, ["ok0.png 0"])
    spec = cfg.splits["s"]
    bad = dataclasses.replace(
        cfg, splits={"s": dataclasses.replace(spec, source={"list": "../x.txt", "root": "imgs"})}
    )
    with pytest.raises(ImageListError, match="leaves the data root"):
        _load(bad, data)


def test_missing_data_names_every_path(tmp_path: Path) -> None:
    cfg = load_benchmark("cifar10")
    pre = small_preprocess("resnet18_32x32", cfg)
    with pytest.raises(ImageListError) as info:
        load_splits(cfg, tmp_path, preprocess=pre)
    msg = str(info.value)
    for rel in (
        "benchmark_imglist/cifar10/train_cifar10.txt",
        "benchmark_imglist/cifar10/val_tin.txt",
        "benchmark_imglist/cifar10/test_places365.txt",
    ):
        assert f"missing file {tmp_path / rel}" in msg
    assert f"missing folder {tmp_path / 'images_classic'}" in msg
    with pytest.raises(ImageListError, match=r"pass --data DATA .*DATA/images_classic"):
        load_splits(cfg, None, preprocess=pre)


def test_missing_data_is_a_missing_file_error_before_any_work(tmp_path: Path) -> None:
    from oodcache.extract.run import extract

    with pytest.raises(MissingFileError) as info:
        extract("resnet18_32x32", "cifar10", tmp_path / "c.h5", data=tmp_path, progress=False)
    assert "train_cifar10.txt" in str(info.value)
    assert not (tmp_path / "c.h5").exists()


def test_workers_decode_the_same_batches(tmp_path: Path) -> None:
    cfg, data, _ = _custom(tmp_path, ["ok0.png 0", "ok1.png 1", "ok2.png 2"])
    split = _load(cfg, data)
    serial = torch.cat(list(split.batches(2, workers=0)))
    parallel = torch.cat(list(split.batches(2, workers=2)))
    torch.testing.assert_close(serial, parallel, rtol=0, atol=0)
    # a shard (rows start:stop, as one torchrun rank reads it) is the same rows of the whole
    shard = list(split.batches(2, start=1, stop=3))
    assert [len(b) for b in shard] == [2]
    torch.testing.assert_close(torch.cat(shard), serial[1:3], rtol=0, atol=0)


# --- preprocessing comes from the libraries ---


def test_preprocessing_matches_its_sources(tmp_path: Path) -> None:
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms as T
    from torchvision.models import ResNet50_Weights

    save_image(tmp_path / "a.jpg", "jpeg", seed=4, size=(300, 260))
    img = load_rgb(tmp_path / "a.jpg")
    imagenet = load_benchmark("imagenet")
    tv = build_preprocess(load_arch("resnet50"), imagenet)
    torch.testing.assert_close(tv.transform(img), ResNet50_Weights.IMAGENET1K_V1.transforms()(img))
    assert tv.spec["resize"] == 256 and tv.spec["crop"] == 224
    v2 = build_preprocess(load_arch("resnet50_v2"), imagenet)
    assert v2.spec["resize"] == 232
    cifar = load_benchmark("cifar100")
    p = cifar.options["preprocess"]
    openood = T.Compose(
        [
            T.Resize(32, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize(p["mean"], p["std"]),
        ]
    )
    ours = build_preprocess(load_arch("resnet18_32x32"), cifar)
    torch.testing.assert_close(ours.transform(img), openood(img))
    assert ours.std == (0.2675, 0.2565, 0.2761)
    bit = build_preprocess(load_arch("bit_s_r101x1"), imagenet)
    cfg = timm.models.get_pretrained_cfg("resnetv2_101x1_bit.goog_in21k").to_dict()
    ref = create_transform(**resolve_data_config({}, pretrained_cfg=cfg), is_training=False)
    torch.testing.assert_close(bit.transform(img), ref(img))
    assert bit.std == (0.5, 0.5, 0.5)


def test_split_logs_sizes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg, data, _ = _custom(tmp_path, ["ok0.png 0", "ok1.png 1"])
    with caplog.at_level(logging.INFO, logger="oodcache.extract.imagelists"):
        _load(cfg, data)
    assert any("split s (id_val): 2 images" in r.getMessage() for r in caplog.records)


# --- the NAC authors' selection, against a transcription of their two steps ---


def _authors_imglist_generator(lines: list[str], split_num: int, seed: int) -> tuple[list, list]:
    """BierOne/ood_coverage imglist_generator.py, transcribed: (sub_train, main_train) lines."""
    cls_to_imgs: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        _, label = line.strip("\n").split(" ", 1)
        cls_to_imgs[label].append(line)
    num_each_cls = int(split_num / len(cls_to_imgs))
    sub, main = [], []
    for cls in cls_to_imgs:
        imgs = cls_to_imgs[cls]
        np.random.RandomState(seed).shuffle(imgs)
        sub += imgs[:num_each_cls]
        main += imgs[num_each_cls:]
    return sub, main


def _authors_train_subset(main: list[str], valid_num: int, seed: int) -> list[str]:
    """TrainSubset(valid_num=..., balanced=True, rand_seed=seed).valid_inds, transcribed."""
    samples = [(line.split(" ")[0], int(line.split(" ")[1])) for line in main]
    cls_to_idxes: dict[int, list[int]] = defaultdict(list)
    for idx, entry in enumerate(samples):
        cls_to_idxes[entry[1]].append(idx)
    min_len = min(len(v) for v in cls_to_idxes.values())
    sub_num = min(int(valid_num / len(cls_to_idxes)), min_len)
    valid: list[int] = []
    for cls in cls_to_idxes:
        inds = cls_to_idxes[cls]
        np.random.RandomState(seed).shuffle(inds)
        valid += inds[:sub_num]
    return [main[i] for i in valid]


@pytest.mark.parametrize("seed", [1, 7])
def test_sanity_and_fit_are_the_nac_authors_images(seed: int) -> None:
    """A list whose classes are interleaved (labels in shuffled order, uneven class sizes): the
    sanity and fit images are exactly those the authors' two official steps pick."""
    rng = np.random.default_rng(0)
    k = 5
    labels = np.concatenate([np.full(n, c) for c, n in enumerate([31, 40, 25, 37, 29])])
    rng.shuffle(labels)
    lines = [f"img/{i:04d}.png {int(c)}\n" for i, c in enumerate(labels)]
    items = [Item(f"img/{i:04d}.png", int(c), f"list:{i + 1}") for i, c in enumerate(labels)]
    sanity_per_class, fit_per_class = 4, 6
    sub, main = _authors_imglist_generator(list(lines), sanity_per_class * k, seed)
    build = _authors_train_subset(main, fit_per_class * k, seed)
    ours = partition(
        items, k, seed=seed, sanity_per_class=sanity_per_class,
        sizes={"fit": fit_per_class * k, "sanity": None, "train": None},
    )  # fmt: skip
    assert {i.path for i in ours["sanity"]} == {line.split(" ")[0] for line in sub}
    assert {i.path for i in ours["fit"]} == {line.split(" ")[0] for line in build}
    assert {i.path for i in ours["train"]} == {line.split(" ")[0] for line in lines}  # all


def test_openood_cifar10_tree_writes_the_authors_sanity_and_fit(tmp_path: Path) -> None:
    """On an OpenOOD-layout CIFAR-10 tree, splits/sanity.txt and splits/fit.txt hold exactly the
    images the authors' generator and TrainSubset pick from train_cifar10.txt (seed 1)."""
    cfg = shrink(load_benchmark("cifar10"), sanity=1, fit=20, train=None)  # 1 and 2 per class
    data = tmp_path / "data"
    build_tree(cfg, data, classes=range(10), per_class=5)
    run = tmp_path / "splits"
    load_splits(cfg, data, preprocess=small_preprocess("resnet18_32x32", cfg), splits_dir=run)
    train_list = data / cfg.options["partition"]["list"]
    lines = train_list.read_text().splitlines(keepends=True)
    sub, main = _authors_imglist_generator(lines, 1 * 10, cfg.seed)
    build = _authors_train_subset(main, 20, cfg.seed)

    def paths(path: Path) -> set[str]:
        text = path.read_text().splitlines()
        return {line.split(" ")[0] for line in text if line and not line.startswith("#")}

    assert cfg.seed == 1
    assert paths(run / "sanity.txt") == {line.split(" ")[0] for line in sub}
    assert paths(run / "fit.txt") == {line.split(" ")[0] for line in build}
    # train: every line of the training list (the official statistics' set)
    assert paths(run / "train.txt") == {line.split(" ")[0] for line in lines if line.strip()}


def test_identity_changes_when_an_image_file_changes(tmp_path: Path) -> None:
    """A finished shard is resumed only for the same files: path, size and mtime enter its key."""
    for i in range(3):
        save_image(tmp_path / f"{i}.png", "rgb_png", i)
    items = [Item(f"{i}.png", 0, f"l:{i}") for i in range(3)]
    split = ImageSplit("s", tmp_path, items, preprocess=None)  # type: ignore[arg-type]
    before = split.identity(0, 3)
    assert split.identity(0, 3) == before and split.identity(0, 2) != before
    save_image(tmp_path / "1.png", "rgb_png", 99, size=(15, 11))  # replaced on disk
    os.utime(tmp_path / "1.png", ns=(1, 1))
    assert split.identity(0, 3) != before
    assert split.identity(2, 3) == ImageSplit("s", tmp_path, items, None).identity(2, 3)  # type: ignore[arg-type]


def _decode_share(rank: int, root: str, init: str, out: str) -> None:
    """One of two gloo ranks: ``_drop_undecodable`` on the same list, counting its decodes."""
    import json

    import torch.distributed as tdist

    from oodcache.extract import imagelists

    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    decoded: list[int] = []
    real = imagelists._Images.__getitem__

    def counting(self, i):  # type: ignore[no-untyped-def]
        decoded.append(i)
        return real(self, i)

    imagelists._Images.__getitem__ = counting  # type: ignore[method-assign]
    items = [Item(f"{i}.png", 0, f"l:{i}") for i in range(7)]
    kept, skipped = imagelists._drop_undecodable(Path(root), items, 0)
    Path(out).write_text(
        json.dumps({"kept": [it.path for it in kept], "bad": [s[1] for s in skipped],
                    "decoded": len(decoded)})
    )  # fmt: skip
    tdist.destroy_process_group()


def test_skip_bad_decodes_each_image_once_across_ranks(tmp_path: Path) -> None:
    import json

    import torch.multiprocessing as mp

    from oodcache.extract.imagelists import _drop_undecodable

    for i in range(7):
        save_image(tmp_path / f"{i}.png", "rgb_png", i)
    (tmp_path / "2.png").write_bytes(b"not an image")
    (tmp_path / "5.png").write_bytes(b"\x89PNG broken")
    items = [Item(f"{i}.png", 0, f"l:{i}") for i in range(7)]
    kept, skipped = _drop_undecodable(tmp_path, items, 0)  # one process: the reference
    init = f"file://{tmp_path / 'pg'}"
    outs = [str(tmp_path / f"rank{r}.json") for r in range(2)]
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_decode_share, args=(r, str(tmp_path), init, outs[r])) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = [json.loads(Path(o).read_text()) for o in outs]
    for res in results:  # every rank drops the same images as one process
        assert res["kept"] == [it.path for it in kept] and len(res["bad"]) == 2
        assert [Path(b).name for b in res["bad"]] == ["2.png", "5.png"]
    assert sorted(r["decoded"] for r in results) == [3, 4]  # 7 decodes in all, not 14
    assert [Path(s[1]).name for s in skipped] == ["2.png", "5.png"]
