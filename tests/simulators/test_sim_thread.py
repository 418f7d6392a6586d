"""SimulatorThread serves any of the three simulators from a background thread."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from simulators.alma import AlmaState
from simulators.libcal import LibCalState
from simulators.passagepoint import PassagePointState
from simulators.thread import SimulatorThread


@pytest.mark.parametrize(
    ("state", "path", "status"),
    [
        (AlmaState(), "/almaws/v1/users/nobody?apikey=test-key", 400),  # Alma's "user not found"
        (LibCalState(), "/1.1/space/bookings", 401),  # no bearer token
        (PassagePointState(), "/pp/api/v2/visit/getDestinations", 401),  # no token header
    ],
    ids=["alma", "libcal", "passagepoint"],
)
def test_serves_the_simulator_of_its_state(state, path, status):
    """Each state gets its own simulator on a free loopback port; call() reads the state safely."""
    with SimulatorThread(state) as sim:
        assert sim.base_url.startswith("http://127.0.0.1:") and sim.port > 0
        with pytest.raises(urllib.error.HTTPError) as exc_info:
            urllib.request.urlopen(sim.base_url + path, timeout=10)
        assert exc_info.value.code == status
        assert sim.call(lambda: [entry["status"] for entry in state.requests]) == [status]


def test_refuses_what_is_not_a_simulator_state():
    """Anything but a simulator's state is a TypeError naming the states it knows."""
    with pytest.raises(TypeError, match=r"no simulator for a dict \(known: AlmaState, LibCalState, PassagePointState\)"):
        SimulatorThread({})
