"""The ``sims`` fixture (three simulators and a config pointing at them) for every lcpp test."""

from lcpp_sims import sims  # noqa: F401 - a fixture, found by pytest through this module
