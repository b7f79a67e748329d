"""`meter-provision vend`: issue one top-up token, as 20 digits to read aloud or, with
``--online``, as the signed token JSON. For tests and small operators."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.cli import Subcommands
from protocol.currency import (
    DEFAULT_DECIMALS,
    AmountError,
    currency_decimals,
    format_amount,
    parse_amount,
)
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
from protocol.tokens.token_class import VALUE_RANGES
from provisioning.counter_ledger import (
    DEFAULT_LEDGER,
    LEDGER_ENV,
    default_ledger_path,
    open_ledger,
)
from provisioning.errors import ProvisionError
from provisioning.key_files import read_secret_file
from provisioning.keys_cli import SIGNING_KEY_BYTES

_CLASSES = {c.cli_name: c for c in TokenClass}
#: the classes whose value is money: typed with --amount in currency units
MONEY_CLASSES = (TokenClass.CREDIT, TokenClass.SET_EMERGENCY_CREDIT)

EXAMPLE = f"""\
examples:
  meter-provision vend --vending-key vending.key --meter PE1-000042 --amount 12.50
  meter-provision vend --online --signing-key signing.key --key-id v1 --currency KES \\
      --meter PE1-000042 --amount 12.50
  meter-provision vend --vending-key vending.key --meter PE1-000042 \\
      --class set-max-power --value 5000
  meter-provision vend --vending-key vending.key --meter PE1-000042 \\
      --class set-emergency-credit --amount 5.00

Each token takes the meter's next purchase counter from the counter ledger (--ledger,
or ${LEDGER_ENV}, else ./{DEFAULT_LEDGER}): per meter and key epoch the last counter
issued, kept owner-only and locked while a vend runs. --counter N issues a chosen one;
a counter issued before is refused unless --force (the meter would refuse the second
token as replayed). The counter is printed on stderr, the token on stdout.
"""


class VendError(ProvisionError):
    """A vend request that cannot be honoured as asked (the operator's to fix)."""


def add_vend_command(sub: Subcommands) -> None:
    parser = sub.add_parser(
        "vend",
        help="issue a top-up or management token",
        description="Issue one token: 20 digits for the keypad, or with --online the signed "
        "token JSON. For tests and small operators; a vending service does the same.",
        epilog=EXAMPLE,
    )
    parser.add_argument("--meter", required=True, help="meter id, e.g. PE1-000042")
    parser.add_argument(
        "--counter", type=int, help="purchase counter 0..65535 (default: the next one)"
    )
    parser.add_argument("--force", action="store_true", help="issue a counter issued before")
    parser.add_argument(
        "--ledger",
        type=Path,
        help=f"counter ledger file (default: ${LEDGER_ENV} or ./{DEFAULT_LEDGER})",
    )
    parser.add_argument("--epoch", type=int, default=0, help="the meter's key epoch")
    parser.add_argument(
        "--class",
        dest="token_class",
        choices=sorted(_CLASSES),
        default="credit",
        help="the token's class",
    )
    parser.add_argument(
        "--amount",
        help="credit, or the emergency credit of set-emergency-credit, in currency units, "
        "e.g. 12.50",
    )
    parser.add_argument(
        "--currency",
        help="the meter's currency, ISO 4217 (its decimals parse --amount; online tokens carry it)",
    )
    parser.add_argument(
        "--decimals",
        type=int,
        help="minor-unit digits when no --currency is given (default: 2)",
    )
    parser.add_argument(
        "--value",
        type=int,
        help="value of a management token: W, tamper mask, new epoch or test code",
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--vending-key", type=Path, help="keypad: the utility's vending key file")
    keys.add_argument("--meter-key", type=Path, help="keypad: this meter's key file")
    parser.add_argument("--online", action="store_true", help="print a signed online token")
    parser.add_argument("--signing-key", type=Path, help="online: Ed25519 private key file")
    parser.add_argument("--key-id", help="online: the signing key's id")
    parser.add_argument("--valid-hours", type=int, default=168, help="online: validity in hours")
    parser.add_argument("--txn-id", help="online: 32 hex digits (default: random)")
    parser.add_argument("--issued-at", help="online: ISO time with zone (default: now)")
    parser.set_defaults(func=vend)


def _decimals(args: argparse.Namespace) -> int:
    """The minor-unit digits --amount is read with: the currency's, else --decimals, else 2."""
    if args.currency is None:
        return DEFAULT_DECIMALS if args.decimals is None else args.decimals
    try:
        decimals = currency_decimals(args.currency)
    except AmountError as exc:
        raise VendError(f"--currency {exc}") from None
    if args.decimals is not None and args.decimals != decimals:
        raise VendError(f"--decimals {args.decimals}: {args.currency} has {decimals} decimals")
    return decimals


def amount_to_minor(text: str, decimals: int) -> int:
    """``"12.50"`` -> 1250 exactly (:func:`protocol.currency.parse_amount`), as a vend's
    --amount: a positive plain decimal with no more decimals than the currency has."""
    try:
        minor = parse_amount(text, decimals)
    except AmountError as exc:
        if text.strip().startswith("-"):
            raise VendError(f"--amount {text.strip()[:40]} must be positive") from None
        raise VendError(f"--amount {exc}") from None
    return minor


def _typed_value(args: argparse.Namespace, keypad: bool) -> tuple[TokenClass, int]:
    """The token's class and value; money (credit, emergency credit) is typed in currency
    units with --amount and carried in minor units, everything else with --value."""
    token_class = _CLASSES[args.token_class]
    if token_class not in MONEY_CLASSES:
        if args.value is None or args.amount is not None:
            raise VendError(f"--class {args.token_class} takes --value, not --amount")
        return token_class, args.value
    if args.amount is None or args.value is not None:
        raise VendError(f"--class {args.token_class} takes --amount (currency units), not --value")
    decimals = _decimals(args)
    minor = amount_to_minor(args.amount, decimals)
    low, high = VALUE_RANGES[token_class]
    if not low <= minor <= high:
        shown = [format_amount(m, decimals, grouping=True) for m in (low, high)]
        raise VendError(f"--amount must be {shown[0]} to {shown[1]}")
    if token_class is TokenClass.CREDIT and keypad and 0 < minor <= MAX_KEYPAD_AMOUNT:
        carried = round_down_to_keypad_amount(minor)
        if carried != minor:
            print(
                f"note: the keypad token carries {format_amount(carried, decimals, grouping=True)} "
                f"of {format_amount(minor, decimals, grouping=True)}; charge the customer that amount",
                file=sys.stderr,
            )
        minor = carried
    return token_class, minor


def _issue_with_counter(
    args: argparse.Namespace, token_class: TokenClass, issue: Callable[[int], str]
) -> int:
    """Take the counter from the ledger, make the token with it, record the counter
    durably, then print the token (stdout) and the counter (stderr)."""
    path = args.ledger or default_ledger_path()
    with open_ledger(path) as ledger:
        before = ledger.last(args.meter, args.epoch)
        counter = ledger.take(
            args.meter, args.epoch, args.counter, force=args.force, token_class=token_class
        )
        try:
            token = issue(counter)
        except ValueError as exc:
            raise VendError(str(exc)) from None
        ledger.commit()
    print(token)
    last = "none before" if before is None else f"the last was {before}"
    print(
        f"counter {counter} for {args.meter}, key epoch {args.epoch} ({last}); recorded in {path}",
        file=sys.stderr,
    )
    return 0


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

    def issue(counter: int) -> str:
        return group_digits(issue_keypad(key, args.meter, args.epoch, token_class, counter, value))

    return _issue_with_counter(args, token_class, issue)


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
    except ValueError as exc:
        raise VendError(str(exc)) from None

    def issue(counter: int) -> str:
        token = issue_online(
            private_key,
            args.key_id,
            args.meter,
            counter,
            token_class,
            value,
            args.currency,
            txn_id,
            issued,
            issued + timedelta(hours=args.valid_hours),
            args.epoch,
        )
        return json.dumps(online_token_document(token), indent=2)

    return _issue_with_counter(args, token_class, issue)
