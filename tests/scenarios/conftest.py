"""Scenario tests prove the cap under load, retries and faults, and report their figures.

Each scenario calls `figures.record(name, **numbers)`; the figures are printed at the end of the
pytest run (so CI's log carries them) and written to build/scenario-figures.json.
"""

import json
from pathlib import Path

import pytest

from e2e.conftest import (  # noqa: F401 - shared fixtures
    fake_stripe, home, issue, ledger_of, postgres_home_template, sqlite_home_template)

_FIGURES: dict[str, dict] = {}
OUTPUT = Path(__file__).resolve().parents[2] / "build" / "scenario-figures.json"


class Figures:
    def record(self, scenario: str, **numbers) -> None:
        _FIGURES[scenario] = numbers


@pytest.fixture
def figures() -> Figures:
    return Figures()


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    terminalreporter.section("scenario figures")
    for scenario, numbers in _FIGURES.items():
        terminalreporter.write_line(f"{scenario}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(json.dumps(_FIGURES, indent=2, default=str) + "\n")
