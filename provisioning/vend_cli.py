"""`meter-provision vend`: issue one top-up token, as 20 digits to read aloud or, with
``--online``, as the signed token JSON. For tests and small operators."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.tokens import (
    MeterKey,
    TokenClass,
    group_digits,
    issue_keypad,
    issue_online,
    online_token_document,
    round_down_to_keypad_amount,
)
from protocol.tokens.amount import MAX_KEYPAD_AMOUNT
from protocol.tokens.keys import METER_KEY_BYTES, VENDING_KEY_BYTES
from protocol.tokens.online import TXN_ID_BYTES
from protocol.tokens.token_class import MAX_CREDIT_MINOR, MIN_CREDIT_MINOR
from provisioning.key_files import read_secret_file
from provisioning.keys_cli import SIGNING_KEY_BYTES

_CLASSES = {c.cli_name: c for c in TokenClass}
_PLAIN_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?")


class VendError(Exception):
    """A vend request that cannot be honoured as asked (the operator's to fix)."""


def add_vend_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("vend", help="issue a top-up or management token")
    parser.add_argument("--meter", required=True, help="meter id, e.g. PE1-000042")
    parser.add_argument("--counter", type=int, required=True, help="purchase counter 0..65535")
    parser.add_argument("--epoch", type=int, default=0, help="the meter's key epoch (default 0)")
    parser.add_argument("--class", dest="token_class", choices=sorted(_CLASSES), default="credit")
    parser.add_argument("--amount", help="credit in currency units, e.g. 12.50")
    parser.add_argument("--decimals", type=int, default=2, help="minor-unit digits (default 2)")
    parser.add_argument(
        "--value",
        type=int,
        help="value of a management token: W, tamper mask, minor units, new epoch or test code",
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--vending-key", type=Path, help="keypad: the utility's vending key file")
    keys.add_argument("--meter-key", type=Path, help="keypad: this meter's key file")
    parser.add_argument("--online", action="store_true", help="print a signed online token")
    parser.add_argument("--signing-key", type=Path, help="online: Ed25519 private key file")
    parser.add_argument("--key-id", help="online: the signing key's id")
    parser.add_argument("--currency", help="online: ISO 4217 code, e.g. KES")
    parser.add_argument("--valid-hours", type=int, default=168, help="online: validity (7 days)")
    parser.add_argument("--txn-id", help="online: 32 hex digits (default random)")
    parser.add_argument("--issued-at", help="online: ISO time with zone (default now)")
    parser.set_defaults(func=vend)


def amount_to_minor(text: str, decimals: int) -> int:
    """``"12.50"`` -> 1250 exactly; refuses anything but a plain decimal number and more
    decimals than the currency has."""
    if not _PLAIN_DECIMAL.fullmatch(text):
        raise VendError(f"--amount {text[:40]!r} is not a plain decimal amount like 12.50")
    minor = Decimal(text).scaleb(decimals)
    if minor != minor.to_integral_value():
        raise VendError(f"--amount {text} has more than {decimals} decimals")
    return int(minor)


def format_minor(minor: int, decimals: int) -> str:
    units, rest = divmod(minor, 10**decimals)
    return f"{units:,}.{rest:0{decimals}d}" if decimals else f"{units:,}"


def _typed_value(args: argparse.Namespace, keypad: bool) -> tuple[TokenClass, int]:
    token_class = _CLASSES[args.token_class]
    if token_class is not TokenClass.CREDIT:
        if args.value is None or args.amount is not None:
            raise VendError(f"--class {args.token_class} takes --value, not --amount")
        return token_class, args.value
    if args.amount is None or args.value is not None:
        raise VendError("a credit token takes --amount, not --value")
    minor = amount_to_minor(args.amount, args.decimals)
    if not MIN_CREDIT_MINOR <= minor <= MAX_CREDIT_MINOR:
        low, high = (format_minor(m, args.decimals) for m in (MIN_CREDIT_MINOR, MAX_CREDIT_MINOR))
        raise VendError(f"--amount must be {low} to {high}")
    if keypad and 0 < minor <= MAX_KEYPAD_AMOUNT:
        carried = round_down_to_keypad_amount(minor)
        if carried != minor:
            print(
                f"note: the keypad token carries {format_minor(carried, args.decimals)} of "
                f"{format_minor(minor, args.decimals)}; charge the customer that amount",
                file=sys.stderr,
            )
        minor = carried
    return token_class, minor


def vend(args: argparse.Namespace) -> int:
    if args.online:
        return _vend_online(args)
    if args.vending_key is not None:
        key: bytes | MeterKey = read_secret_file(args.vending_key, VENDING_KEY_BYTES)
    elif args.meter_key is not None:
        key = MeterKey(read_secret_file(args.meter_key, METER_KEY_BYTES))
    else:
        raise VendError("a keypad token needs --vending-key or --meter-key")
    token_class, value = _typed_value(args, keypad=True)
    try:
        digits = issue_keypad(key, args.meter, args.epoch, token_class, args.counter, value)
    except ValueError as exc:
        raise VendError(str(exc)) from None
    print(group_digits(digits))
    return 0


def _vend_online(args: argparse.Namespace) -> int:
    if args.signing_key is None or args.key_id is None or args.currency is None:
        raise VendError("--online needs --signing-key, --key-id and --currency")
    private_key = Ed25519PrivateKey.from_private_bytes(
        read_secret_file(args.signing_key, SIGNING_KEY_BYTES)
    )
    token_class, value = _typed_value(args, keypad=False)
    try:
        txn_id = (
            secrets.token_bytes(TXN_ID_BYTES) if args.txn_id is None else bytes.fromhex(args.txn_id)
        )
        issued = (
            datetime.now(UTC).replace(microsecond=0)
            if args.issued_at is None
            else datetime.fromisoformat(args.issued_at)
        )
        token = issue_online(
            private_key,
            args.key_id,
            args.meter,
            args.counter,
            token_class,
            value,
            args.currency,
            txn_id,
            issued,
            issued + timedelta(hours=args.valid_hours),
            args.epoch,
        )
    except ValueError as exc:
        raise VendError(str(exc)) from None
    print(json.dumps(online_token_document(token), indent=2))
    return 0
