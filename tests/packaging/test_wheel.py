"""The wheels built from this checkout: ems-gateway carries the gateway only, ems-gateway-sim the simulators.

Each is built with ``pip wheel --no-deps`` from a copy of the tracked tree (a stale ``build/`` in the work tree
would otherwise leak old files into the wheel), about 4 s each on an idle machine. ``-s`` prints the contents.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from tests.packaging.helpers import ROOT, pyproject_version

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="needs git")]


def _clean_copy(dest: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files, as packaging/build-deb takes them."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_symlink() or src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
    return dest


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """distribution (as in the wheel's name) -> its wheel, built from a clean copy of the checkout."""
    tmp = tmp_path_factory.mktemp("wheels")
    src = _clean_copy(tmp / "src")
    out = tmp / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    for project in (src, src / "sim"):
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(project)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, f"pip wheel {project.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    found = {whl.name.split("-")[0]: whl for whl in sorted(out.glob("*.whl"))}
    for whl in found.values():
        names = _names(whl)
        print(f"\n{whl.name}: {len(names)} files")
        for n in names:
            print(f"  {n}")
    return found


def _names(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        return sorted(z.namelist())


def _dist_info(whl: Path, member: str) -> str:
    with zipfile.ZipFile(whl) as z:
        (name,) = (n for n in z.namelist() if n.endswith(f".dist-info/{member}"))
        return z.read(name).decode()


def _tops(names: list[str]) -> set[str]:
    return {PurePosixPath(n).parts[0] for n in names}


def test_the_product_wheel_carries_the_gateway_only(wheels: dict[str, Path]) -> None:
    whl = wheels["ems_gateway"]
    names = _names(whl)
    assert _tops(names) == {"gateway", f"ems_gateway-{pyproject_version()}.dist-info"}
    assert not [n for n in names if n.startswith(("hil/", "tests/", "sitesim/")) or "bench" in n or "scenario" in n]
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").rglob("*.py")}
    assert in_tree <= set(names), f"modules missing from the wheel: {sorted(in_tree - set(names))}"
    maps = {f"gateway/meters/maps/{p.name}" for p in (ROOT / "gateway" / "meters" / "maps").glob("*.toml")}
    assert maps and maps <= set(names)
    for data in ("gateway/data/reference-site.toml", "gateway/py.typed", "gateway/web/static/index.html"):
        assert data in names, data
    with zipfile.ZipFile(whl) as z:  # the file itself, not a link to etc/
        assert z.read("gateway/data/reference-site.toml") == (ROOT / "gateway/data/reference-site.toml").read_bytes()
    assert "ems-gateway = gateway.__main__:main" in _dist_info(whl, "entry_points.txt")


def test_the_sim_wheel_carries_the_simulators_and_provides_the_demo_command(wheels: dict[str, Path]) -> None:
    whl = wheels["ems_gateway_sim"]
    names = _names(whl)
    assert {n.split("/")[0] for n in names if not n.startswith("sitesim/")} == {
        n.split("/")[0] for n in names if ".dist-info/" in n}, "sitesim/ and its dist-info only"
    assert {f"sitesim/{p.name}" for p in (ROOT / "sim" / "sitesim").glob("*.py")} <= set(names)
    entry_points = _dist_info(whl, "entry_points.txt")
    assert "[ems_gateway.commands]\ndemo = sitesim.demo" in entry_points
    metadata = _dist_info(whl, "METADATA")
    assert "Requires-Dist: ems-gateway\n" in metadata
