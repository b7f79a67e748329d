"""`meter-provision init`: the gateway's identity, a starter gateway.toml and an empty store."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.public import ConfigError, Store, StoreError, parse_config
from protocol.cli import Subcommands
from provisioning.broker_url import DEFAULT_BROKER, parse_broker_url
from provisioning.errors import ProvisionError
from provisioning.identity import IdentityError, create_identity, starter_config, write_private

EXAMPLE = """\
examples:
  meter-provision init --dir /etc/prepaid-edge --gateway-id gw-nairobi-07 \\
      --organisation "Example Power" --broker mqtts://mqtt.example-power.com:8883
  meter-provision init --dir gw --gateway-id gw-bench --broker mqtt://127.0.0.1:1884
      (a bench: a broker on this machine, no TLS)
"""


def add_init_command(sub: Subcommands) -> None:
    p = sub.add_parser(
        "init",
        help="create the gateway identity, a starter gateway.toml and an empty store",
        description="Create gateway.key (owner-only), gateway.csr for the utility's CA, "
        "optionally a self-signed gateway.crt, gateway.toml and an empty store.",
        epilog=EXAMPLE,
    )
    p.add_argument("--dir", type=Path, required=True, help="folder for the identity and config")
    p.add_argument("--gateway-id", required=True, help="this gateway's id (letters, digits, ._-)")
    p.add_argument(
        "--key-type", choices=["ed25519", "p256"], default="ed25519", help="the identity key's type"
    )
    p.add_argument("--organisation", help="organisation name in the CSR subject")
    p.add_argument(
        "--self-signed-days", type=int, help="also write a self-signed development certificate"
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        help="mqtts://HOST[:PORT] (TLS, port 8883 by default) or mqtt://HOST[:PORT] (no TLS, "
        f"1883) (default: a placeholder, {DEFAULT_BROKER.host}, to edit in the config)",
    )
    p.add_argument("--store", type=Path, help="store path (default DIR/gateway.db)")
    p.add_argument("--force", action="store_true", help="replace an existing identity")
    p.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    folder: Path = args.dir.resolve()
    store = (args.store or folder / "gateway.db").resolve()
    config = folder / "gateway.toml"
    if args.self_signed_days is not None and args.self_signed_days <= 0:
        raise ProvisionError("--self-signed-days must be a positive number of days")
    if config.exists() and not args.force:
        raise ProvisionError(f"{config} exists: refusing to replace it without --force")
    if store.parent != folder and not store.parent.is_dir():
        raise ProvisionError(f"--store {store}: the folder {store.parent} does not exist")
    broker = DEFAULT_BROKER if args.broker is None else parse_broker_url(args.broker)
    text = starter_config(args.gateway_id, folder, store, broker)
    # Validate the starter config (the gateway id) before anything is written.
    try:
        parse_config(text, str(config), env={})
    except ConfigError as exc:
        raise ProvisionError(f"--gateway-id {args.gateway_id!r}: {exc.problem}") from None
    try:
        files = create_identity(
            folder,
            args.gateway_id,
            key_type=args.key_type,
            organisation=args.organisation,
            self_signed_days=args.self_signed_days,
            force=args.force,
        )
    except IdentityError as exc:
        raise ProvisionError(str(exc)) from None
    try:
        Store.open(store).close()
    except StoreError as exc:
        raise ProvisionError(str(exc)) from None
    write_private(config, text)  # it may come to hold the MQTT password
    print(f"identity: {files.key} (owner-only), CSR {files.csr}")
    if files.cert is not None:
        print(f"self-signed development certificate: {files.cert}")
    print(f"config: {config}")
    print(f"store: {store}")
    if args.broker is None:
        print(f"broker: {broker.host} is a placeholder: put the site's broker in [mqtt] brokers")
    else:
        print(f"broker: {'mqtts' if broker.tls else 'mqtt'}://{broker.host}:{broker.port}")
    ca = "send the CSR to the utility's CA, " if broker.tls else ""
    print(f"next: {ca}add [[buses]] to the config, then scan")
    return 0
