"""The hardware-in-the-loop rig: run a scenario (:mod:`hil.scenario`) against the real gateway process."""

from hil.rig.runner import Recording, Rig, run_scenario, static_limits

__all__ = ["Recording", "Rig", "run_scenario", "static_limits"]
