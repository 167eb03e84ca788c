"""``ems-gateway web-user add NAME --role ROLE``: add or replace a user in the web users file."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from gateway.web.config import DEFAULT_USERS_FILE
from gateway.web.users import ROLES, User, UsersFileError, hash_password, load_users, save_users, valid_name

MIN_PASSWORD_CHARS = 8


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "web-user",
        help="manage the web page's users (password hashes in the users file)",
        description="Manage the users of the local web page. Passwords are stored as scrypt hashes.",
    )
    wsub = p.add_subparsers(dest="web_command", metavar="ACTION", required=True)
    a = wsub.add_parser("add", help="add a user, or replace one's password and role")
    a.add_argument("name", help="user name (letters, digits, _ . @ -; at most 64)")
    a.add_argument("--role", choices=ROLES, required=True, help="viewer (read) or technician (read, site cap)")
    a.add_argument("--file", default=DEFAULT_USERS_FILE, help=f"users file (default {DEFAULT_USERS_FILE})")
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    a.set_defaults(func=run_add)
    r = wsub.add_parser("remove", help="remove a user")
    r.add_argument("name")
    r.add_argument("--file", default=DEFAULT_USERS_FILE)
    r.set_defaults(func=run_remove)


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        print("ems-gateway: the passwords differ", file=sys.stderr)
        return None
    return first


def run_add(args: argparse.Namespace) -> int:
    if not valid_name(args.name):
        print(f"ems-gateway: invalid user name {args.name!r}", file=sys.stderr)
        return 2
    try:
        users = load_users(args.file)
    except (UsersFileError, OSError) as exc:
        print(f"ems-gateway: {args.file}: {exc}", file=sys.stderr)
        return 2
    password = _read_password(args.password_stdin)
    if password is None:
        return 2
    if len(password) < MIN_PASSWORD_CHARS:
        print(f"ems-gateway: a password has at least {MIN_PASSWORD_CHARS} characters", file=sys.stderr)
        return 2
    users[args.name] = User(args.name, args.role, hash_password(password))
    save_users(args.file, users)
    print(f"{args.name}: {args.role} written to {args.file}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    try:
        users = load_users(args.file)
    except (UsersFileError, OSError) as exc:
        print(f"ems-gateway: {args.file}: {exc}", file=sys.stderr)
        return 2
    if users.pop(args.name, None) is None:
        print(f"ems-gateway: no user {args.name!r} in {args.file}", file=sys.stderr)
        return 1
    save_users(args.file, users)
    print(f"{args.name}: removed from {args.file}")
    return 0
