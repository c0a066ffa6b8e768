"""Every catalogue case has a test in tests/faults, and every test there names a case."""

from __future__ import annotations

import re
from pathlib import Path

from catalogue import CASES, CATEGORIES

HERE = Path(__file__).parent


def _marked() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(HERE.glob("test_*.py")):
        for case in re.findall(r'@case\("([^"]+)"\)', path.read_text()):
            found.setdefault(case, []).append(path.name)
    return found


def test_every_case_has_a_test_and_every_test_a_case() -> None:
    marked = _marked()
    assert sorted(set(CASES) - set(marked)) == [], "catalogue cases without a test"
    assert sorted(set(marked) - set(CASES)) == [], "tests naming no catalogue case"
    assert all(c.category in CATEGORIES for c in CASES.values())


def test_every_test_function_is_marked() -> None:
    for path in sorted(HERE.glob("test_*.py")):
        if path.name == "test_catalogue.py":
            continue
        text = path.read_text()
        tests = re.findall(r"^def (test_\w+)", text, flags=re.M)
        marked = re.findall(r'@case\("[^"]+"\)\n(?:@.*\n|    .*\n|\)\n)*?def (test_\w+)', text)
        assert sorted(tests) == sorted(marked), f"{path.name}: unmarked tests"


def test_reliability_page_lists_every_case_and_no_data_lost() -> None:
    page = (HERE.parents[1] / "docs" / "reliability.md").read_text()
    summary = re.search(r"\*\*(\d+) cases tried, (\d+) passed, (\d+) data lost\*\*", page)
    assert summary is not None, "summary line missing: run tests/faults/reliability.py"
    tried, passed, lost = (int(g) for g in summary.groups())
    assert tried == passed and lost == 0
    missing = [c for c in CASES if f"| {c} |" not in page]
    assert missing == [], "cases missing from docs/reliability.md: run tests/faults/reliability.py"
