"""Category 4 (configs): a benchmark or arch YAML that is malformed in ways plain YAML accepts is
refused by ``oodcache extract`` with a message naming the file and the key, before any work."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from faultkit import cli, cli_env

from oodcache.config import ConfigError, load_arch, load_benchmark

case = pytest.mark.case

DIGITS = (
    Path(__file__).resolve().parents[2] / "oodcache/configs/benchmarks/digits.yaml"
).read_text()


def _bench(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    return path


def _extract(bench: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = cli("extract", "--arch", "digits_resnet", "--benchmark", str(bench), "--out", str(out))
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)


@case("config-duplicate-key")
def test_a_duplicated_key_is_refused(tmp_path: Path) -> None:
    text = DIGITS.replace(
        "  id_test:    {role: id_test",
        "  id_val:     {role: id_val,  dataset: digits-0-4, source: {part: test}}\n"
        "  id_test:    {role: id_test",
    )
    bench = _bench(tmp_path, text)
    with pytest.raises(ConfigError, match=r"line \d+: duplicate key 'id_val'"):
        load_benchmark(str(bench))
    done = _extract(bench, tmp_path / "out" / "cache.h5")
    assert done.returncode == 2 and "duplicate key 'id_val'" in done.stderr
    assert not (tmp_path / "out").exists()


@case("config-alias-bomb")
def test_yaml_aliases_are_refused_before_expansion(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    bench = _bench(tmp_path, bomb + DIGITS)
    with pytest.raises(ConfigError, match="aliases"):
        load_benchmark(str(bench))


@case("config-names-as-paths")
@pytest.mark.parametrize(
    ("old", "new", "what"),
    [
        ("  photos:     {role: far", "  ../../x/y:  {role: far", "split name '../../x/y'"),
        ("  photos:     {role: far", "  a/b:        {role: far", "split name 'a/b'"),
        ("dataset: photos,", "dataset: 'ph|<script>',", "dataset of split 'photos'"),
        ("name: digits", "name: ../digits", "benchmark name '../digits'"),
    ],
)
def test_names_that_would_be_paths_or_markup_are_refused(
    tmp_path: Path, old: str, new: str, what: str
) -> None:
    assert old in DIGITS
    bench = _bench(tmp_path, DIGITS.replace(old, new, 1))
    with pytest.raises(ConfigError, match="is not a valid name"):
        load_benchmark(str(bench))
    done = _extract(bench, tmp_path / "out" / "cache.h5")
    assert done.returncode == 2 and what in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


@case("config-types")
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("seed: 0", "seed: '0'", "seed must be an integer"),
        ("num_classes: 5", "num_classes: 0", "num_classes must be an integer >= 1"),
        (
            "  textures:   {role: far,     dataset: textures,         source: {pictures: "
            "[brick, grass, gravel], count: 500}}",
            "  textures:",
            "split 'textures' must be a mapping",
        ),
        ("{role: far,     dataset: textures", "{role: farr,    dataset: textures", "role 'farr'"),
    ],
)
def test_wrong_types_and_values_are_refused(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in DIGITS, old
    bench = _bench(tmp_path, DIGITS.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message):
        load_benchmark(str(bench))


@case("config-not-utf8")
def test_a_config_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_bytes(DIGITS.encode().replace(b"micrographs", b"micro\xffgraphs"))
    line = DIGITS[: DIGITS.index("micrographs")].count("\n") + 1
    with pytest.raises(ConfigError, match=rf"line {line}: not UTF-8"):
        load_benchmark(str(path))


@case("config-arch-layer-name")
def test_an_arch_layer_name_that_is_a_path_is_refused(tmp_path: Path) -> None:
    text = Path(__file__).resolve().parents[2] / "oodcache/configs/archs/digits_resnet.yaml"
    path = tmp_path / "arch.yaml"
    body = text.read_text()
    assert "  layer3:" in body
    path.write_text(body.replace("  layer3:", "  ../l3:", 1))
    with pytest.raises(ConfigError, match="layer name '../l3' is not a valid name"):
        load_arch(str(path))


@case("list-hostile-files")
@pytest.mark.parametrize("how", ["dev-zero", "not-utf8", "fifo"])
def test_an_image_list_that_is_not_a_text_file_is_refused(tmp_path: Path, how: str) -> None:
    from oodcache.extract.imagelists import ImageListError, read_list

    path = tmp_path / "list.txt"
    if how == "dev-zero":
        path.symlink_to("/dev/zero")  # used to read 13 GB before failing
        match = "not a regular file"
    elif how == "fifo":
        os.mkfifo(path)
        match = "not a regular file"
    else:
        path.write_bytes(b"a.png 0\nb\xff.png 1\n")
        match = r"list.txt:2: not UTF-8"
    with pytest.raises(ImageListError, match=match):
        read_list(path, is_id=True, num_classes=2)


@case("folder-symlink-loop")
def test_a_symlink_loop_counts_each_image_once(tmp_path: Path) -> None:
    from oodcache.extract.imagelists import scan_folder

    root = tmp_path / "ood"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "img.png").write_bytes(b"x")
    (root / "sub" / "loop").symlink_to(root)  # used to count img.png 41 times
    (root / "again").symlink_to(root / "sub")
    items = scan_folder(root, is_id=False, num_classes=2)
    assert len(items) == 1
