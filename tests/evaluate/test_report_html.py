"""The report of a real digits run (extract, search, score, report) opened in headless Chromium:
the tables and figures render, and the figures are valid PNGs, one ROC curve per OOD test set.

Needs headless Chromium (Debian: ``apt-get install -y chromium``; ``make test`` installs it when
run as root). Without it the browser test is skipped, and reported in the run's last line; CI
(``OODCACHE_REQUIRE_SERVICES=1``) fails instead.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import system_services
from PIL import Image

from oodcache.evaluate.replay import load_best, write_scores
from oodcache.evaluate.report import build_report
from oodcache.search.study import run_search

METHODS = {"msp": 1, "energy": 3, "lhact": 4}  # trials: parameter-free, one and two parameters
HEADINGS = (
    "Summary",
    "Methods × OOD test sets",
    "Per OOD test set",
    "Validation vs test gap",
    "Published numbers",
    "Tuned parameters",
    "Figures",
    "ROC curves",
    "Score histograms",
    "Optimisation history",
    "Parameter importances",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_report(toy_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report/ of a copy of the toy digits cache after a short search of three methods."""
    run = tmp_path_factory.mktemp("report_run")
    cache = run / "cache.h5"
    shutil.copy2(toy_cache, cache)
    for method, trials in METHODS.items():
        run_search(cache, method, trials=trials, seed=0)
        write_scores(cache, method, load_best(cache, method)["params"])
    _, out = build_report(cache, n_boot=200)
    return out


def _ood_splits(out: Path) -> list[str]:
    splits = json.loads((out.parent / "scores" / "splits.json").read_text())["splits"]
    return [name for name, s in splits.items() if s["role"] in ("near", "far")]


def test_figures_are_valid_pngs(digits_report: Path) -> None:
    figures = digits_report / "figures"
    pngs = sorted(figures.glob("*.png"))
    for path in pngs:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.width >= 300 and im.height >= 200, path
            assert np.asarray(im.convert("L")).std() > 5, f"{path} looks blank"
    names = {p.name for p in pngs}
    rocs = {n for n in names if n.startswith("roc_")}
    assert rocs == {f"roc_{split}.png" for split in _ood_splits(digits_report)}
    assert {f"hist_{m}.png" for m in METHODS} <= names
    assert {"history_energy.png", "history_lhact.png", "importance_lhact.png"} <= names


def _chromium() -> str:
    found = system_services.chromium()
    if found is None:
        system_services.missing(system_services.CHROMIUM)
        raise AssertionError("unreachable")  # missing() skips or fails
    return str(found)


def _run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_html_renders_in_chromium(digits_report: Path, tmp_path: Path) -> None:
    browser = _chromium()
    page = digits_report / "report.html"
    text = page.read_text()
    # self-contained: no script, no stylesheet link, no remote reference; figures embedded
    assert "<script" not in text and "<link" not in text
    assert not re.search(r'(src|href)="(https?:)?//', text)
    embedded = text.count('src="data:image/png;base64,')
    assert embedded == len(list((digits_report / "figures").glob("*.png")))

    url = page.resolve().as_uri()
    dom = _run_chromium(browser, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    headings = {
        html.unescape(re.sub(r"<[^>]+>", "", h)).strip()
        for h in re.findall(r"<h[23][^>]*>(.*?)</h[23]>", dom.stdout, flags=re.S)
    }
    missing = [h for h in HEADINGS if h not in headings]
    assert not missing, f"headings missing from the rendered page: {missing}"
    assert dom.stdout.count("<table") >= 8
    assert dom.stdout.count("<img") == embedded

    shot = tmp_path / "report.png"
    result = _run_chromium(
        browser,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        url,
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        gray = np.asarray(im.convert("L"), dtype=np.float64)
    assert gray.std() > 20, "the screenshot is blank"
    ink = (gray < 128).mean()  # dark pixels: text and table rules
    assert 0.005 < ink < 0.5, ink
    rows_with_ink = ((gray < 128).sum(axis=1) > 0).mean()
    assert rows_with_ink > 0.3, "most of the first screen is empty"
