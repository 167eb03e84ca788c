"""The broken-config corpus: every file in tests/corpus/configs/ gives the exit code, key path and reason listed in
cases.toml from `ems-gateway check-config` and `ems-gateway run`, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.__main__ import main
from gateway.confkit import MAX_FILE_BYTES

HERE = Path(__file__).resolve().parent / "configs"
CASES: dict[str, dict[str, object]] = tomllib.loads((HERE / "cases.toml").read_text())
ROOT = Path(__file__).resolve().parents[2]


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_config(name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    monkeypatch.chdir(HERE)  # state_dir = "state" is relative
    rc, out, err = _run_main(["check-config", name], capsys)
    assert rc == case["exit"], (out, err)
    if rc == 0:
        assert str(case["reason"]) in out
        return
    assert "Traceback" not in err
    assert err.startswith("ems-gateway: invalid configuration: "), err
    assert name in err  # the file
    key, reason = str(case["key"]), str(case["reason"])
    if key:
        assert f": {key}: " in err, err
    assert reason in err, err
    assert len(err) < 2000  # the reason, not a dump of the offending value


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c["exit"] != 0))
def test_run_refuses_before_starting(name: str, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)
    rc, _, err = _run_main(["run", "--config", name], capsys)
    assert rc == 2 and str(CASES[name]["reason"]) in err, err


def test_too_large_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.toml"
    big.write_bytes(b"# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    rc, _, err = _run_main(["check-config", str(big)], capsys)
    assert rc == 2 and "file too large" in err and str(big) in err
    rc, _, err = _run_main(["check-config", str(tmp_path / "absent.toml")], capsys)
    assert rc == 2 and "cannot read config" in err
    rc, _, err = _run_main(["check-config", str(tmp_path)], capsys)
    assert rc == 2 and "cannot read config" in err


def test_state_dir_override_that_is_a_file(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)
    rc, _, err = _run_main(["run", "--config", "ok-base.toml", "--state-dir", "/etc/passwd"], capsys)
    assert rc == 2 and "--state-dir" in err and "not a directory" in err


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def test_real_process_exit_codes_and_no_traceback() -> None:
    for name in ("binary.bin", "5000-deep-arrays.toml", "400-digit-integer.toml"):
        p = subprocess.run(_cli("check-config", name), cwd=HERE, capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "Traceback" not in p.stderr and name in p.stderr, p.stderr


def test_check_config_into_a_closed_pipe(tmp_path: Path) -> None:
    """`ems-gateway check-config FILE | head -1`: the reader goes away; no BrokenPipeError traceback. The site's
    report (800 chargers, about 130 kB) is larger than a pipe's buffer."""
    chargers = "".join(
        f'[[chargers]]\nid = "C{i}"\ncircuit = "p1"\nphases = 3\nmax_current_a = 32\nfailsafe_current_a = 0\n'
        for i in range(800)
    )
    src = tmp_path / "big-site.toml"
    src.write_text(
        '[site]\nid = "big"\n[service]\nvoltage_ll_v = 400\nlimit_a = 4000\n'
        '[[circuits]]\nid = "p1"\nparent = "service"\nlimit_a = 4000\n' + chargers
    )
    p = subprocess.Popen(_cli("check-config", str(src)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()  # as head does after its line
    err = p.stderr.read().decode()
    rc = p.wait(timeout=60)
    assert first.startswith(b"site big")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc == 0
