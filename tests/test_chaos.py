"""A brief seeded fault-injection run (tests/chaos.py) in every `make test`; `make chaos` runs
it as long as asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import Chaos

pytestmark = pytest.mark.timeout(240)


def test_a_brief_chaos_run_breaks_no_promise(tmp_path: Path) -> None:
    tmp_path.chmod(0o711)
    report = Chaos(tmp_path, seed=20261130).run(seconds=40)
    assert not report.violations, str(report)
    assert report.actions["settle"] >= 2  # it did something, and checked
