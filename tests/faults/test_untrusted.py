"""Category 6: untrusted files are parsed as data, never run. A checkpoint pickle that would run
code is refused (``torch.load(weights_only=True)``); YAML is read with ``safe_load``; a cache's
attributes and the best-parameters JSON are parsed with ``json`` (bad text is a clear error); a
path in an image list cannot leave its root."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from oodcache.cache import Cache, CacheError
from oodcache.config import ConfigError, load_arch
from oodcache.evaluate.replay import fitted, load_best
from oodcache.extract.imagelists import ImageListError, read_list
from oodcache.extract.models import WeightsError, build_model, load_weights, resolve_arch

case = pytest.mark.case


class _Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do (worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


@case("untrusted-pickle-checkpoint")
def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    model = build_model(resolve_arch("digits_resnet"))
    state = dict(model.state_dict())
    state["evil"] = _Payload(marker)  # type: ignore[assignment]
    ckpt = tmp_path / "evil.pt"
    torch.save(state, ckpt)
    with pytest.raises(WeightsError, match=r"refusing to load .*evil\.pt.*could run code"):
        load_weights(model, ckpt)
    assert not marker.exists()


@case("untrusted-yaml-tag")
def test_yaml_with_a_python_tag_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(
        "name: !!python/object/apply:pathlib.Path.write_text "
        f"[!!python/object/apply:pathlib.Path ['{marker}'], 'pwned']\n"
    )
    with pytest.raises(ConfigError, match=r"evil\.yaml: not a valid plain YAML config"):
        load_arch(str(path))
    assert not marker.exists()


@case("untrusted-cache-attrs")
@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("config", "__import__('os').system('touch {marker}')"),
        ("odin_grid", "[(1000, 0.0014)]"),
        ("odin_grid", '{"a": 1}'),
        ("config", "[1, 2]"),
        ("odin_form", "__import__('os').system('touch {marker}')"),
    ],
    ids=["code-in-config", "python-tuple", "not-pairs", "not-object", "unknown-odin-form"],
)
def test_cache_attributes_are_parsed_not_evaluated(
    cache: Path, key: str, text: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    with h5py.File(cache, "a") as f:
        f.attrs[key] = text.replace("{marker}", str(marker))
    with Cache(cache) as c, pytest.raises(CacheError, match=rf"cache\.h5: attribute '{key}'"):
        c.config() if key == "config" else getattr(c, key)
    assert not marker.exists()


@case("untrusted-best-params")
@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("{'params': {}}", r"react\.json is not valid JSON"),
        ('{"params": [90]}', r"expected a JSON object with a 'params' object"),
        ('{"method": "knn", "params": {}}', r"holds parameters of 'knn', not 'react'"),
    ],
    ids=["python-literal", "params-not-object", "other-method"],
)
def test_malformed_best_parameters_are_a_clear_error(cache: Path, text: str, pattern: str) -> None:
    best = cache.parent / "best" / "react.json"
    best.parent.mkdir()
    best.write_text(text)
    with pytest.raises(ValueError, match=pattern):
        load_best(cache, "react")


@case("untrusted-best-unknown-param")
def test_unknown_parameter_in_best_file_is_named(cache: Path) -> None:
    with pytest.raises(ValueError, match=r"react: unknown parameters \['__class__'\]"):
        fitted(cache, "react", json.loads('{"__class__": 1}'))


@case("untrusted-list-path-escape")
@pytest.mark.parametrize(
    "entry", ["../secret.png", "/etc/passwd", "a/../../secret.png", "C:/x.png", "..\\secret.png"]
)
def test_list_paths_cannot_leave_the_root(tmp_path: Path, entry: str) -> None:
    lst = tmp_path / "ood.txt"
    lst.write_text(f"ok.png\n{entry}\n")
    with pytest.raises(ImageListError, match=r"ood\.txt:2: image path .* leaves the data root"):
        read_list(lst, is_id=False, num_classes=3)
