"""Plugin commands: ``ems-gateway demo`` comes from the ems-gateway-sim distribution through an entry point.

The gateway imports nothing of sitesim: it lists the ``ems_gateway.commands`` entry points. Without the
simulators the command says what to install (exit 2); a plugin that fails to load never stops the gateway's own
commands; a plugin cannot replace one of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from gateway.__main__ import PLUGIN_GROUP, main

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = str(ROOT / "gateway" / "data" / "reference-site.toml")


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=PLUGIN_GROUP)


def test_without_the_simulators_the_demo_says_what_to_install(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "5", "--no-ui"], plugins=()) == 2
    err = capsys.readouterr().err
    assert err.startswith("ems-gateway demo: not installed: ")
    assert "ems-gateway-sim" in err and "./dev demo" in err and "pip install ./sim" in err and "socat" in err


def test_a_plugin_that_fails_to_load_is_reported_and_the_gateways_commands_go_on(
        capsys: pytest.CaptureFixture[str]) -> None:
    broken = [_ep("demo", "no_such_module_for_the_test")]
    assert main(["demo"], plugins=broken) == 2
    assert "its plugin no_such_module_for_the_test failed to load: ModuleNotFoundError" in capsys.readouterr().err
    assert main(["check-config", REFERENCE], plugins=broken) == 0
    assert "configuration OK" in capsys.readouterr().out


def test_a_plugin_named_like_a_builtin_command_is_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", REFERENCE], plugins=[_ep("check-config", "no_such_module_for_the_test")]) == 0
    assert "configuration OK" in capsys.readouterr().out


def test_the_sim_entry_point_provides_the_demo_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"], plugins=[_ep("demo", "sitesim.demo")])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--tcp-meters" in out and "--duration" in out


def test_unknown_arguments_of_an_installed_command_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["check-config", REFERENCE, "--no-such-option"], plugins=())
    assert exit_.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_the_installed_entry_points_are_found(tmp_path: Path) -> None:
    """importlib.metadata's discovery itself: a distribution on the path that declares the demo command (as
    sim/pyproject.toml does once installed) gives ``ems-gateway demo`` its parser."""
    info = tmp_path / "ems_gateway_sim_test-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ems-gateway-sim-test\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\ndemo = sitesim.demo\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(ROOT / "sim")])}
    proc = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "run the simulated 20-stall reference site" in proc.stdout
