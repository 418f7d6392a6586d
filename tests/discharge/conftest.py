"""Fixtures of the discharge command tests that run against the Alma simulator: its state, the
running simulator, and the API key, each module's own ``KEY`` (so a test can check that its key
never shows up in output)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulators.alma import AlmaState
from simulators.thread import SimulatorThread


@pytest.fixture
def state(request: pytest.FixtureRequest) -> AlmaState:
    return AlmaState(per_second_limit=200, api_keys={request.module.KEY})


@pytest.fixture
def sim(state: AlmaState) -> Iterator[SimulatorThread]:
    with SimulatorThread(state) as running:
        yield running


@pytest.fixture
def api_key(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """ALMA_API_KEY set to the module's KEY (modules that want it for every test mark themselves
    with ``pytestmark = pytest.mark.usefixtures("api_key")``)."""
    monkeypatch.setenv("ALMA_API_KEY", request.module.KEY)
