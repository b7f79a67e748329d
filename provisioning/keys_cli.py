"""`meter-provision keys ...`: make the utility's vending and signing keys, export one
meter's keypad key for enrolment (the gateway gets that, never the vending key), and
install meters' keys of a later epoch in the gateway's store ahead of a key change."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.cli import Subcommands, add_config_option
from protocol.tokens.keys import MAX_EPOCH, VENDING_KEY_BYTES, derive_meter_key
from protocol.tokens.online import b64url_encode
from provisioning.errors import ProvisionError
from provisioning.key_files import read_secret_file, write_secret_file
from provisioning.site import load_site_config, open_store, tell_gateway

SIGNING_KEY_BYTES = 32


KEYS_EXAMPLES = """\
examples:
  meter-provision keys new-vending-key --out vending.key
  meter-provision keys meter-key --vending-key vending.key --meter PE1-000042 \\
      --out keys/PE1-000042.key
  meter-provision keys new-signing-key --out signing.key --key-id v1
  meter-provision keys install --vending-key vending.key --epoch 1 --all
"""


def _example(*lines: str) -> str:
    return "example:\n" + "".join(f"  meter-provision keys {line}\n" for line in lines)


def add_keys_commands(sub: Subcommands) -> None:
    keys = sub.add_parser(
        "keys",
        help="make vending/signing keys, export a meter's key",
        description="Key files are hex, created owner-only (0600) and never overwritten.",
        epilog=KEYS_EXAMPLES,
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND", required=True)

    new = keys_sub.add_parser(
        "new-vending-key",
        help="a new random 256-bit vending key",
        epilog=_example("new-vending-key --out vending.key"),
    )
    new.add_argument("--out", type=Path, required=True, help="new file, created mode 0600")
    new.set_defaults(func=new_vending_key)

    sign = keys_sub.add_parser(
        "new-signing-key",
        help="a new Ed25519 key for online tokens; prints its public key",
        epilog=_example("new-signing-key --out signing.key --key-id v1"),
    )
    sign.add_argument("--out", type=Path, required=True, help="new file, created mode 0600")
    sign.add_argument("--key-id", required=True, help="the id gateways know the key by")
    sign.set_defaults(func=new_signing_key)

    meter = keys_sub.add_parser(
        "meter-key",
        help="derive one meter's keypad key (hex)",
        epilog=_example(
            "meter-key --vending-key vending.key --meter PE1-000042 --out keys/PE1-000042.key",
            "meter-key --vending-key vending.key --meter PE1-000042 --epoch 1   (prints it)",
        ),
    )
    meter.add_argument("--vending-key", type=Path, required=True, help="the vending key file")
    meter.add_argument("--meter", required=True, help="meter id, e.g. PE1-000042")
    meter.add_argument("--epoch", type=int, default=0, help="key epoch")
    meter.add_argument("--out", type=Path, help="write to a new 0600 file instead of stdout")
    meter.set_defaults(func=export_meter_key)

    install = keys_sub.add_parser(
        "install",
        help="put meters' keys of a later epoch in the gateway's store (before a key change)",
        description="A key-change token moves a meter only to an epoch whose key the "
        "gateway already holds: install them first, then vend the key-change tokens.",
        epilog=_example(
            "install --vending-key vending.key --epoch 1 --all",
            "install --vending-key vending.key --epoch 1 --meter PE1-000042",
        ),
    )
    add_config_option(install)
    install.add_argument("--vending-key", type=Path, required=True, help="the vending key file")
    install.add_argument("--epoch", type=int, required=True, help="the new key epoch")
    which = install.add_mutually_exclusive_group(required=True)
    which.add_argument("--meter", action="append", help="meter id (repeat for several)")
    which.add_argument("--all", action="store_true", help="every meter in the store")
    install.set_defaults(func=install_meter_keys)


def new_vending_key(args: argparse.Namespace) -> int:
    write_secret_file(args.out, secrets.token_bytes(VENDING_KEY_BYTES))
    print(f"wrote a new vending key to {args.out}")
    return 0


def new_signing_key(args: argparse.Namespace) -> int:
    key = Ed25519PrivateKey.generate()
    write_secret_file(args.out, key.private_bytes_raw())
    public = b64url_encode(key.public_key().public_bytes_raw())
    print(f"wrote a new signing key to {args.out}")
    print(f"public key for gateways: {args.key_id} = {public}")
    return 0


def export_meter_key(args: argparse.Namespace) -> int:
    vending_key = read_secret_file(args.vending_key, VENDING_KEY_BYTES)
    meter_key = derive_meter_key(vending_key, args.meter, args.epoch)
    if args.out is None:
        print(meter_key.hex())
    else:
        write_secret_file(args.out, meter_key.secret)
        print(f"wrote the key of {args.meter} (epoch {args.epoch}) to {args.out}")
    return 0


def install_meter_keys(args: argparse.Namespace) -> int:
    """Derive each meter's key of ``--epoch`` and install them all in one transaction."""
    if not 1 <= args.epoch <= MAX_EPOCH:
        raise ProvisionError(f"--epoch must be 1..{MAX_EPOCH}: {args.epoch}")
    vending_key = read_secret_file(args.vending_key, VENDING_KEY_BYTES)
    config = load_site_config(args.config)
    with open_store(config) as store:
        enrolled = [m.record.meter_id for m in store.load_meters()]
        meters = enrolled if args.all else list(dict.fromkeys(args.meter))
        unknown = sorted(set(meters) - set(enrolled))
        if unknown:
            raise ProvisionError(f"meter {unknown[0]} is not enrolled: nothing installed")
        if not meters:
            raise ProvisionError("no meters enrolled: nothing installed")
        store.install_meter_keys(
            [(m, args.epoch, derive_meter_key(vending_key, m, args.epoch).secret) for m in meters]
        )
    print(
        f"installed the key epoch {args.epoch} keys of {len(meters)} meter(s); now vend each "
        f"a key-change token: meter-provision vend --class key-change --value {args.epoch} ..."
    )
    told = tell_gateway(config)
    if told is not None:
        told = told.replace("polls the new meters", "loads the new keys")
        told = told.replace("poll the new meters", "load the new keys")
        print(told, file=sys.stderr if told.startswith("warning") else sys.stdout)
    return 0
