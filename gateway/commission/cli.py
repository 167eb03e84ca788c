"""``ems-gateway commission``: the commissioning steps against the running daemon, and the report."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway.cli_run import DEFAULT_CONFIG

EXIT_ACTION_NEEDED = 1
EXIT_NO_DAEMON = 3


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "commission",
        help="commissioning tests against the running daemon, and the report for the inspector",
        description="Talks to the running daemon over its control socket. Each step is optional: "
        "--inventory (the default when no step is given), --wiring (sign, CT ratio, phase identification: "
        "holds one charger low at a time), --load-test (a simulated load on every metered circuit: the "
        "chargers must reduce, then recover), --failsafe-test (a short test lease per charger). --verify "
        "runs the non-disruptive checks and compares them with the last report. Test inputs end by "
        "themselves in the daemon; Ctrl-C clears them at once. Exit 0: every check passed; 1: action "
        "needed (listed in the report); 3: no daemon.",
    )
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"the daemon's config (default {DEFAULT_CONFIG})")
    p.add_argument("--socket", help="the daemon's control socket (default: from the configuration's state_dir)")
    p.add_argument("--inventory", action="store_true", help="chargers and meters as the daemon knows them")
    p.add_argument("--wiring", action="store_true", help="meter sign, CT ratio and phase identification")
    p.add_argument("--load-test", action="store_true", help="simulated load on the service and metered circuits")
    p.add_argument("--failsafe-test", action="store_true", help="each charger falls back to its fail-safe limit")
    p.add_argument("--all", action="store_true", help="every step")
    p.add_argument("--verify", action="store_true", help="non-disruptive checks compared with the last report")
    p.add_argument("--report", metavar="DIR", help="write the report here (default: under state_dir/commission)")
    p.add_argument("--no-pdf", action="store_true", help="HTML and JSON only")
    p.add_argument("--load-a", type=float, help="simulated load per phase (default: the EV current cut to 40 %%)")
    p.add_argument("--hold-s", type=float, default=60.0, help="how long a step waits for the chargers (default 60)")
    p.add_argument("--poll-s", type=float, default=0.5, help="status sampling interval (default 0.5)")
    p.add_argument("--lease-s", type=int, default=10, help="the fail-safe test's lease (default 10)")
    p.set_defaults(func=run)


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    from gateway import ctl
    from gateway.config import load_site

    return ctl.socket_path(load_site(args.config).state_dir)  # ConfigError -> exit 2


def run(args: argparse.Namespace) -> int:
    from gateway.commission.runner import Options

    path = _socket(args)
    any_step = args.inventory or args.wiring or args.load_test or args.failsafe_test or args.all
    opts = Options(
        inventory=args.inventory or args.all or not any_step,
        wiring=args.wiring or args.all,
        load_test=args.load_test or args.all,
        failsafe_test=args.failsafe_test or args.all,
        poll_s=args.poll_s,
        hold_s=args.hold_s,
        recover_s=args.hold_s,
        load_a=args.load_a,
        lease_s=args.lease_s,
    )
    return asyncio.run(_main(path, opts, args))


async def _main(path: Path, opts: Any, args: argparse.Namespace) -> int:
    from gateway.commission import CommissionError
    from gateway.commission.report import verdict
    from gateway.commission.runner import commission
    from gateway.ctl import CtlClient

    client = CtlClient(path, timeout_s=max(60.0, opts.hold_s + 30.0))
    try:
        result, files = await commission(
            client, opts, report_dir=Path(args.report) if args.report else None, verify=args.verify,
            pdf=not args.no_pdf,
        )
    except (OSError, ConnectionError) as exc:
        print(f"ems-gateway commission: cannot reach the daemon at {path}: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except CommissionError as exc:
        print(f"ems-gateway commission: {exc}", file=sys.stderr)
        return EXIT_ACTION_NEEDED
    finally:
        await client.close()
    ok, todo = verdict(result)
    print("PASS: every check passed" if ok else f"ACTION NEEDED ({len(todo)}):")
    for line in todo:
        print(f"  - {line}")
    for k in ("html", "pdf", "json", "baseline"):
        if files.get(k):
            print(f"{k}: {files[k]}")
    for k in ("pdf_problem", "baseline_problem"):
        if files.get(k):
            print(f"note: {files[k]}", file=sys.stderr)
    return 0 if ok else EXIT_ACTION_NEEDED
