"""Category 5: bad model input. An unknown arch or layer, weights that do not fit the arch, and a
network that produces NaN or Inf: each a clear error before anything is written (an older cache
stays as it was)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest
import torch
import yaml
from faultkit import TinyExtract, cli, cli_env, digest

from oodcache.config import CONFIG_DIR, ConfigError
from oodcache.extract.models import WeightsError
from oodcache.extract.run import NonFiniteError, extract

case = pytest.mark.case


def _nothing_written(out: Path) -> bool:
    return not any(out.with_name(out.name + s).exists() for s in ("", ".tmp", ".lock"))


@case("model-unknown-arch")
def test_unknown_arch_lists_the_known_ones(tiny_bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    args = cli(
        "extract", "--arch", "resnet5000", "--benchmark", str(tiny_bench), "--out", str(out)
    )
    done = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "unknown arch 'resnet5000'; available: [" in done.stderr
    assert "'digits_resnet'" in done.stderr and "Traceback" not in done.stderr
    assert _nothing_written(out)


@case("model-unknown-layer")
def test_unknown_layer_lists_the_valid_names(
    tiny_bench: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    arch = yaml.safe_load((CONFIG_DIR / "archs" / "digits_resnet.yaml").read_text())
    arch["layers"]["layer3"]["module"] = "layer33"
    path = tmp_path / "bad_arch.yaml"
    path.write_text(yaml.safe_dump(arch))
    out = tmp_path / "cache.h5"
    with pytest.raises(
        KeyError, match=r"no modules named \['layer33'\]; valid names: \[.*'layer3'"
    ):
        extract(str(path), str(tiny_bench), out, weights=tiny_weights, progress=False)
    assert _nothing_written(out)


def _weights(tiny_weights: Path, tmp_path: Path, change: Callable[[dict], None]) -> Path:
    state = torch.load(tiny_weights, weights_only=True)
    change(state)
    path = tmp_path / "changed.pt"
    torch.save(state, path)
    return path


@case("model-weights-mismatch")
@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda s: s.pop("fc.bias"), r"missing keys .*\(1\):\s+fc\.bias"),
        (
            lambda s: s.__setitem__("extra.w", torch.zeros(2)),
            r"unexpected keys .*\(1\):\s+extra\.w",
        ),
        (
            lambda s: s.__setitem__("fc.weight", torch.zeros(7, 128)),
            r"shape mismatches \(1\):\s+fc\.weight: file \(7, 128\) vs model \(5, 128\)",
        ),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_weights_that_do_not_fit_are_a_readable_diff(
    change: Callable[[dict], None],
    pattern: str,
    tiny_extract: TinyExtract,
    tiny_weights: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "cache.h5"
    with pytest.raises(WeightsError, match=pattern):
        tiny_extract(out, weights=_weights(tiny_weights, tmp_path, change))
    assert _nothing_written(out)


@case("model-nonfinite")
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_inf_is_reported_with_split_and_rows_and_not_stored(
    value: float,
    tiny_extract: TinyExtract,
    tiny_weights: Path,
    write_synthetic: Callable[..., object],
    tmp_path: Path,
    data_lost: Callable[[str], NoReturn],
) -> None:
    out = tmp_path / "cache.h5"
    write_synthetic(out)
    before = digest(out)

    def poison(state: dict) -> None:
        state["fc.bias"][2] = value

    with pytest.raises(
        NonFiniteError, match=r"split 'fit', rows 0\.\.3: non-finite values in logits"
    ):
        tiny_extract(out, weights=_weights(tiny_weights, tmp_path, poison))
    if digest(out) != before:
        data_lost("a failed extraction changed the older cache")
    assert not out.with_name("cache.h5.tmp").exists()


@case("model-class-count")
def test_arch_and_benchmark_class_counts_must_agree(tiny_bench: Path, tmp_path: Path) -> None:
    bench = yaml.safe_load(tiny_bench.read_text())
    bench["num_classes"] = 7
    path = tmp_path / "seven.yaml"
    path.write_text(yaml.safe_dump(bench))
    with pytest.raises(ConfigError, match=r"cannot run on benchmark tiny \(7 classes\)"):
        extract("digits_resnet", str(path), tmp_path / "cache.h5", progress=False)


@case("model-nonfinite-later-split")
@pytest.mark.parametrize("kind", ["activation", "gradient"])
def test_nan_in_a_later_split_names_split_rows_and_array(
    kind: str, tiny_extract: TinyExtract, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN that only the 12th batch produces (ood_val, rows 4..7) in one layer's gradient or
    activation: the error names the split, the rows and the array; no file is left."""
    import oodcache.extract.run as run

    real, calls = run.record_batch, []

    def poisoned(*args: object, **kwargs: object) -> object:
        logits, feats, acts, grads = real(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(1)
        if len(calls) == 12:
            target = acts if kind == "activation" else grads
            target["layer2"][1, 0] = float("nan")
        return logits, feats, acts, grads

    monkeypatch.setattr(run, "record_batch", poisoned)
    out = tmp_path / "cache.h5"
    pattern = rf"split 'ood_val', rows 4\.\.7: non-finite values in layer layer2 {kind}"
    with pytest.raises(NonFiniteError, match=pattern):
        tiny_extract(out)
    assert _nothing_written(out)
