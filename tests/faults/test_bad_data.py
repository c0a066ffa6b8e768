"""Category 4: bad data. Each case names the file and line (or split) and writes nothing, or is a
documented recovery (``skip_bad``: skipped images are counted in the cache and listed in
``splits/<split>.skipped.txt``; odd image modes are converted to 8-bit RGB)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import cli, cli_env
from PIL import Image

from oodcache.cache import Cache
from oodcache.config import MissingFileError
from oodcache.extract.imagelists import ImageListError
from oodcache.extract.models import build_model, resolve_arch
from oodcache.extract.run import extract

case = pytest.mark.case

BENCH = """\
name: faulty
loader: imagelist
num_classes: 3
seed: 0
options:
  preprocess:
    {{resize: 32, crop: 32, interpolation: bilinear, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
  skip_bad: {skip_bad}
splits:
  fit:     {{role: fit,     dataset: d, source: {{list: lists/id.txt, root: images}}}}
  id_val:  {{role: id_val,  dataset: d, source: {{list: lists/id.txt, root: images}}}}
  ood_val: {{role: ood_val, dataset: o, source: {{{ood}}}}}
"""


def _png(path: Path, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    if mode == "RGB":
        Image.fromarray(rgb, "RGB").save(path)
    elif mode == "L":
        Image.fromarray(rgb[..., 0], "L").save(path)
    elif mode == "RGBA":
        Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA").save(path)
    elif mode == "I;16":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)


class Tree:
    """DATA with images/{0..5}.png, an ID list of lines 'i.png i%3' and an OOD list."""

    def __init__(self, root: Path, weights: Path) -> None:
        self.data = root / "data"
        self.images = self.data / "images"
        for i in range(6):
            _png(self.images / f"{i}.png", i)
        self.id_lines = [f"{i}.png {i % 3}" for i in range(6)]
        self.ood_lines = [f"{i}.png" for i in range(3)]
        self.out = root / "run" / "cache.h5"
        self.bench = root / "faulty.yaml"
        self.weights = weights

    def write(
        self, *, skip_bad: bool = False, ood: str = "list: lists/ood.txt, root: images"
    ) -> None:
        lists = self.data / "lists"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / "id.txt").write_text("".join(line + "\n" for line in self.id_lines))
        (lists / "ood.txt").write_text("".join(line + "\n" for line in self.ood_lines))
        self.bench.write_text(BENCH.format(skip_bad=str(skip_bad).lower(), ood=ood))

    def extract(self, **kw: object) -> Path:
        return extract(
            "resnet18_32x32",
            str(self.bench),
            self.out,
            weights=self.weights,
            data=self.data,
            batch_size=4,
            workers=0,
            progress=False,
            **kw,  # type: ignore[arg-type]
        )

    def nothing_written(self) -> bool:
        names = {p.name for p in self.out.parent.iterdir()} if self.out.parent.exists() else set()
        return not names & {"cache.h5", "cache.h5.tmp", "cache.h5.lock"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random ResNet-18 (32×32) weights for three classes."""
    path = tmp_path_factory.mktemp("weights") / "resnet18_3.pt"
    arch = dataclasses.replace(resolve_arch("resnet18_32x32"), num_classes=3)
    with torch.random.fork_rng():  # leave the session's RNG state alone
        torch.manual_seed(0)
        torch.save(build_model(arch).state_dict(), path)
    return path


@pytest.fixture
def tree(tmp_path: Path, weights: Path) -> Tree:
    t = Tree(tmp_path, weights)
    t.write()
    return t


def _fails(tree: Tree, pattern: str) -> None:
    with pytest.raises((ImageListError, MissingFileError), match=pattern):
        tree.extract()
    assert tree.nothing_written()


@case("data-truncated-image")
def test_truncated_image_names_list_line(tree: Tree) -> None:
    img = tree.images / "4.png"
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    _fails(tree, r"id\.txt:5: cannot read image .*4\.png")


@case("data-corrupt-image")
def test_corrupt_image_names_list_line(tree: Tree) -> None:
    (tree.images / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    _fails(tree, r"id\.txt:3: cannot read image .*2\.png")


@case("data-not-an-image")
def test_non_image_file_in_a_list_names_list_line(tree: Tree) -> None:
    (tree.images / "notes.png").write_text("just some text\n")
    tree.ood_lines.append("notes.png")
    tree.write()
    _fails(tree, r"ood\.txt:4: cannot read image .*notes\.png")


@case("data-skip-bad-recorded")
def test_skip_bad_skips_counts_and_lists_bad_images(tree: Tree) -> None:
    (tree.images / "2.png").write_bytes(b"garbage")
    tree.id_lines.append("absent.png 1")
    tree.write(skip_bad=True)
    tree.extract()
    with Cache(tree.out) as c:
        assert c.size("id_val") == 5  # 7 lines, 2 skipped: shortened, but said so
        assert c.file["splits/id_val"].attrs["skipped"] == 2
    skipped = (tree.out.parent / "splits" / "id_val.skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0].rsplit(":", 1)[1] for line in skipped] == ["7", "3"]


@case("data-empty-folder")
def test_empty_ood_folder_names_the_split(tree: Tree) -> None:
    (tree.data / "empty").mkdir()
    tree.write(ood="folder: empty")
    _fails(tree, r"split 'ood_val' has no images")


@case("data-non-images-in-folder")
def test_folder_of_non_images_has_no_images(tree: Tree) -> None:
    (tree.data / "docs").mkdir()
    (tree.data / "docs" / "readme.txt").write_text("not an image")
    tree.write(ood="folder: docs")
    _fails(tree, r"split 'ood_val' has no images")


@case("data-missing-entry")
def test_missing_list_entry_names_list_line(tree: Tree) -> None:
    tree.id_lines.insert(1, "gone.png 0")
    tree.write()
    _fails(tree, r"id\.txt:2: image file not found: .*gone\.png")


@case("data-malformed-line")
@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("0.png", r"id\.txt:7: malformed line: no label"),
        ("0.png zero", r"id\.txt:7: malformed line"),
    ],
)
def test_malformed_line_names_list_line(tree: Tree, line: str, pattern: str) -> None:
    tree.id_lines.append(line)
    tree.write()
    _fails(tree, pattern)


@case("data-label-out-of-range")
@pytest.mark.parametrize("label", ["3", "-1"])
def test_label_out_of_range_names_list_line(tree: Tree, label: str) -> None:
    tree.id_lines[3] = f"3.png {label}"
    tree.write()
    _fails(tree, rf"id\.txt:4: label {label} outside 0\.\.2 for an ID split")


@case("data-duplicate-path")
def test_duplicate_path_names_both_lines(tree: Tree) -> None:
    tree.id_lines.append("./1.png 1")
    tree.write()
    _fails(tree, r"id\.txt:7: duplicate image path '1\.png' \(already listed at .*id\.txt:2\)")


@case("data-zero-samples")
def test_split_with_zero_samples_names_the_split(tree: Tree) -> None:
    tree.ood_lines = ["# nothing here"]
    tree.write()
    _fails(tree, r"split 'ood_val' has no images")


@case("data-missing-root")
def test_missing_data_root_fails_before_work(tree: Tree) -> None:
    tree.data = tree.data.parent / "nowhere"
    _fails(tree, r"(?s)cannot start:.*missing file .*nowhere/lists/id\.txt")


@case("data-image-modes")
def test_grey_rgba_and_16_bit_images_give_the_rgb_result(tree: Tree) -> None:
    """Grey, RGBA and 16-bit copies of images give the logits of their 8-bit RGB equivalents."""
    for i, mode in ((0, "L"), (1, "RGBA"), (2, "I;16")):
        _png(tree.images / f"m{i}.png", i, mode)
        rgb = Image.open(tree.images / f"m{i}.png")
        equivalent = {"L": rgb.convert("RGB"), "RGBA": rgb.convert("RGB")}.get(mode)
        if equivalent is None:  # 16-bit: v * 257 scales back to exactly v
            grey = np.random.default_rng(i).integers(0, 256, (12, 12, 3), dtype=np.uint8)[..., 0]
            equivalent = Image.fromarray(grey, "L").convert("RGB")
        equivalent.save(tree.images / f"e{i}.png")
    tree.ood_lines = [f"m{i}.png" for i in range(3)] + [f"e{i}.png" for i in range(3)]
    tree.write()
    tree.extract()
    with Cache(tree.out) as c:
        logits = c.load("ood_val").logits
    assert np.isfinite(logits).all()
    np.testing.assert_array_equal(logits[:3], logits[3:])


@case("data-cli-error")
def test_cli_reports_the_line_and_exit_code_2(tree: Tree) -> None:
    tree.id_lines.append("0.png 9")
    tree.write()
    args = cli("extract", "--arch", "resnet18_32x32", "--benchmark", str(tree.bench))
    args += ["--data", str(tree.data), "--out", str(tree.out), "--weights", str(tree.weights)]
    done = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "id.txt:7: label 9 outside 0..2" in done.stderr and "Traceback" not in done.stderr
    assert tree.nothing_written()
