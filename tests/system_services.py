"""System services some tests need (a PostgreSQL server, headless Chromium): found, or skipped
loudly, or failed in CI.

``make test`` installs the missing ones first when it can (root and apt-get: see
``tests/install_services.sh``). Where it cannot, the tests that need them are skipped and the run
ends with one line naming what was skipped and the command that enables it. CI sets
``OODCACHE_REQUIRE_SERVICES=1``, which turns such a skip into a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

#: set to 1 (CI does) to fail, not skip, a test whose service is missing
REQUIRE_ENV = "OODCACHE_REQUIRE_SERVICES"


@dataclass(frozen=True)
class Service:
    name: str  # as a person would say it
    package: str  # the Debian package that provides it


POSTGRES = Service("PostgreSQL server", "postgresql")
CHROMIUM = Service("headless Chromium", "chromium")

#: services whose tests were skipped in this session, with the number of tests
skipped: dict[Service, int] = {}
SERVICES = (POSTGRES, CHROMIUM)


def postgres_bindir() -> Path | None:
    """Folder of the newest installed PostgreSQL server's binaries (``pg_ctl``, ``initdb``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def chromium() -> Path | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return Path(found)
    return None


def enable_command(services: list[Service]) -> str:
    return f"sudo apt-get install -y {' '.join(s.package for s in services)}"


def _message(service: Service) -> str:
    return f"{service.name} not installed: {enable_command([service])} enables this test"


def missing(service: Service) -> None:
    """Skip the calling test (or fail it under ``OODCACHE_REQUIRE_SERVICES=1``). A session
    fixture skips every test that uses it with this one message: :func:`count` tallies them."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{_message(service)} ({REQUIRE_ENV}=1: a missing service is a failure)")
    pytest.skip(_message(service))


def count(report: pytest.TestReport) -> None:
    """Tally a skipped test whose reason is a missing service (from pytest's report hook)."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2])
    for service in SERVICES:
        if _message(service) in reason:
            skipped[service] = skipped.get(service, 0) + 1


def summary_line() -> str | None:
    """The one line printed at the end of a run that skipped tests for a missing service."""
    if not skipped:
        return None
    names = ", ".join(f"{s.name} ({n} test{'s' if n > 1 else ''})" for s, n in skipped.items())
    return (
        f"SKIPPED for missing system services: {names}. Enable with "
        f"`{enable_command(list(skipped))}` (make test does it itself when run as root)."
    )
