"""`meter-provision export` / `import`: move a gateway's enrolment to a replacement box.

The file is JSON: each meter's address, map, settings, enrolment extras and the
commissioning reports that still hold, with its ledger, token window and keypad lockout
when ``--with-ledgers`` (so credit and the replay
protection move too). Meter keys (with the keys of later epochs installed ahead of a key
change), and DL/T 645 meters' passwords and operator codes, travel only with
``--with-keys``, and then only encrypted: scrypt (n=2^15, r=8, p=1) derives an
AES-256-GCM key from a passphrase.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from gateway.public import (
    ESAM,
    GatewayConfig,
    MeterRecord,
    MeterState,
    Publish,
    SettingsError,
    StoreError,
    TokenWindow,
    enrol,
    parse_control_secret,
    settings_from_json,
    settings_to_json,
    state_from_json,
    state_to_json,
)
from protocol.cli import Subcommands, add_config_option
from protocol.tokens.keys import METER_KEY_BYTES
from provisioning.enrol import PlannedMeter, check_meter_id, check_unique
from provisioning.errors import ProvisionError
from provisioning.events import COMMISSIONED
from provisioning.key_files import read_secret_file
from provisioning.sealed_keys import (
    FORMAT,
    PASSPHRASE_ENV,
    ask_passphrase,
    decrypt_keys,
    encrypt_keys,
    later_key_name,
    later_keys,
    unseal,
)
from provisioning.site import (
    load_extras,
    load_site_config,
    lock_store,
    open_store,
    save_extras,
    write_atomic,
)
from provisioning.status import commissioning_reports

VERSION = 1

EXPORT_EXAMPLE = """\
examples:
  meter-provision export --out site.json --with-ledgers
  PREPAID_EDGE_PASSPHRASE=... meter-provision export --out site.json --with-ledgers --with-keys
"""
IMPORT_EXAMPLE = """\
examples:
  PREPAID_EDGE_PASSPHRASE=... meter-provision import site.json --config new/gateway.toml
  meter-provision import site.json --key-dir keys/     (keys as keys/METER_ID.key files)
"""


def add_transfer_commands(sub: Subcommands) -> None:
    ex = sub.add_parser(
        "export",
        help="write the enrolment as JSON (keys only encrypted, with --with-keys)",
        description="Write this gateway's enrolment to a JSON file for a replacement box.",
        epilog=EXPORT_EXAMPLE,
    )
    add_config_option(ex)
    ex.add_argument("--out", type=Path, required=True, help="new file (not overwritten)")
    ex.add_argument("--with-ledgers", action="store_true", help="balances, token windows too")
    ex.add_argument(
        "--with-keys",
        action="store_true",
        help=f"meter keys, encrypted with a passphrase (${PASSPHRASE_ENV} or asked)",
    )
    ex.set_defaults(func=run_export)
    im = sub.add_parser(
        "import",
        help="enrol the meters of an exported file into this gateway's store",
        description="Validate the whole file, then add its meters to this gateway's store.",
        epilog=IMPORT_EXAMPLE,
    )
    im.add_argument("file", type=Path, help="a file written by meter-provision export")
    add_config_option(im)
    im.add_argument("--key-dir", type=Path, help="meter keys as METER_ID.key files (0600)")
    im.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    if args.out.exists():
        raise ProvisionError(f"{args.out} exists: refusing to overwrite it")
    passphrase = ask_passphrase(confirm=True) if args.with_keys else None
    extras = load_extras(config)
    meters: list[JsonValue] = []
    keys: dict[str, str] = {}
    #: keys of later epochs installed ahead of a key change, as METER@EPOCH
    later: dict[str, str] = {}
    #: DL/T 645 passwords and operator codes: secrets, sealed with the keys
    control: dict[str, str] = {}
    with open_store(config) as store:
        stored = store.load_meters()
        executed = store.executed_commands(datetime.now(UTC))
        commissioning = {
            m.record.meter_id: commissioning_reports(store.events(m.record.meter_id))
            for m in stored
        }
    for m in stored:
        r = m.record
        item: dict[str, JsonValue] = {
            "meter_id": r.meter_id,
            "bus": r.bus,
            "unit_id": r.unit_id,
            "map": r.map_name,
            "key_epoch": r.key_epoch,
            "relay_output": r.relay_output,
            "settings": settings_to_json(m.state.settings),
            "extras": dict(extras.get(r.meter_id, {})),
            "commissioning": list(commissioning[r.meter_id]),
        }
        if args.with_ledgers:
            state = state_to_json(m.state)
            state.pop("settings", None)
            item["state"] = state
            w = m.token_window
            item["token_window"] = (
                {"epoch": w.epoch, "highest": w.highest, "bitmap": w.bitmap} if w else None
            )
            item["lockout"] = m.lockout
        if r.control_secret == ESAM:
            item["control"] = ESAM  # no secret: this gateway cannot switch it
        elif r.control_secret is not None:
            control[r.meter_id] = r.control_secret
        meters.append(item)
        keys[r.meter_id] = r.meter_key.hex()
        later.update(
            {later_key_name(r.meter_id, e): k.hex() for e, k in sorted(m.next_keys.items())}
        )
    doc: dict[str, JsonValue] = {
        "format": FORMAT,
        "version": VERSION,
        "gateway_id": config.gateway_id,
        "exported_at": datetime.now(UTC).isoformat(),
        "meters": meters,
        # Signed commands already carried out and still valid: the new gateway refuses
        # them too, so a captured one cannot be played to the replacement box.
        "executed_commands": [
            {"id": i, "expires": e.isoformat(), "executed": x.isoformat()} for i, e, x in executed
        ],
    }
    if passphrase is not None:
        doc["keys"] = encrypt_keys(keys, passphrase)
        if later:
            doc["next_keys"] = encrypt_keys(later, passphrase)
        if control:
            doc["control_secrets"] = encrypt_keys(control, passphrase)
    write_atomic(args.out, json.dumps(doc, indent=2) + "\n", mode=0o600)
    what = "with encrypted keys" if passphrase else "without keys"
    print(f"exported {len(meters)} meters to {args.out} ({what})")
    return 0


def _reports(item: dict[str, Any], source: str) -> list[dict[str, JsonValue]]:
    """An exported meter's commissioning reports, marked with the gateway they come from."""
    reports = item.get("commissioning", [])
    if not isinstance(reports, list):
        raise ProvisionError("commissioning: must be a list of reports")
    out: list[dict[str, JsonValue]] = []
    for body in reports:
        if (
            not isinstance(body, dict)
            or body.get("event") != COMMISSIONED
            or body.get("reason") not in ("pass", "fail")
            or not isinstance(body.get("details"), dict)
        ):
            raise ProvisionError("commissioning: each report is a commissioned event body")
        details = {**body["details"], "imported_from": source}
        out.append({**body, "details": details})
    return out


def _planned(  # noqa: PLR0917 (one call site)
    item: Any,
    keys: dict[str, bytes],
    key_dir: Path | None,
    now: datetime,
    source: str,
    control: dict[str, str],
) -> tuple[
    MeterRecord,
    MeterState,
    TokenWindow | None,
    Any,
    dict[str, str],
    list[dict[str, JsonValue]],
]:
    if not isinstance(item, dict):
        raise ProvisionError("meters: every entry must be an object")
    meter = str(item.get("meter_id", ""))
    try:
        check_meter_id(meter)
        settings = settings_from_json(item["settings"])
        if "state" in item:
            state = state_from_json({**item["state"], "settings": settings})
        else:
            state = enrol(meter, settings, now)
        state = replace(state, meter_id=meter)
        if meter in keys:
            key = keys[meter]
        elif key_dir is not None:
            key = read_secret_file(key_dir / f"{meter}.key", METER_KEY_BYTES)
        else:
            raise ProvisionError("no key: export --with-keys, or give --key-dir")
        record = MeterRecord(
            meter,
            str(item["bus"]),
            int(item["unit_id"]),
            str(item["map"]),
            key,
            int(item.get("key_epoch", 0)),
            str(item["relay_output"]) if item.get("relay_output") else None,
            control.get(meter, ESAM if item.get("control") == ESAM else None),
        )
        w = item.get("token_window")
        window = TokenWindow(int(w["epoch"]), int(w["highest"]), int(w["bitmap"])) if w else None
        reports = _reports(item, source)
    except (KeyError, TypeError, ValueError, SettingsError, ProvisionError) as exc:
        raise ProvisionError(f"meter {meter or '?'}: {exc}") from None
    return record, state, window, item.get("lockout"), dict(item.get("extras") or {}), reports


#: why import refuses to run beside a gateway
BESIDE_A_GATEWAY = "import writes ledgers and sequence numbers the running gateway writes too"


def run_import(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    with lock_store(config, "import", BESIDE_A_GATEWAY):
        return _import(args, config)


def _import(args: argparse.Namespace, config: GatewayConfig) -> int:
    try:
        doc = json.loads(args.file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read {args.file}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProvisionError(f"{args.file} is not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise ProvisionError(f"{args.file}: version {doc.get('version')} (this tool reads 1)")
    passphrase = ask_passphrase(confirm=False) if "keys" in doc else ""
    keys = decrypt_keys(doc["keys"], passphrase) if "keys" in doc else {}
    later = (
        later_keys(decrypt_keys(doc["next_keys"], passphrase, "next_keys"))
        if "next_keys" in doc and "keys" in doc
        else []
    )
    control = unseal(doc["control_secrets"], passphrase) if "control_secrets" in doc else {}
    for meter, secret in control.items():
        try:
            parse_control_secret(secret)
        except ValueError as exc:
            raise ProvisionError(f"control_secrets: {meter}: {exc}") from None
    now = datetime.now(UTC)
    items = doc.get("meters")
    if not isinstance(items, list) or not items:
        raise ProvisionError(f"{args.file}: no meters")
    source = str(doc.get("gateway_id") or args.file)
    planned = [_planned(item, keys, args.key_dir, now, source, control) for item in items]
    executed = _executed_commands(doc.get("executed_commands", []))
    bus_names = {b.name for b in config.buses}
    epochs = {r.meter_id: max(r.key_epoch, w.epoch if w else 0) for r, _, w, *_ in planned}
    for meter, epoch, _key in later:
        if meter not in epochs:
            raise ProvisionError(f"next_keys: meter {meter} is not among the file's meters")
        if epoch <= epochs[meter]:
            raise ProvisionError(
                f"next_keys: meter {meter} is at key epoch {epochs[meter]}, not below {epoch}"
            )
    for record, *_ in planned:
        if record.bus not in bus_names:
            raise ProvisionError(
                f"meter {record.meter_id}: bus {record.bus!r} is not in the config"
            )
    with open_store(config) as store:
        check_unique(
            [(i + 1, PlannedMeter(r, s, e)) for i, (r, s, _, _, e, _) in enumerate(planned)],
            store.load_meters(),
        )
        extras = load_extras(config)
        extras.update({r.meter_id: e for r, _, _, _, e, _ in planned if e})
        save_extras(config, extras)
        for record, state, window, lockout, _, reports in planned:
            try:
                store.add_meter(record, state, now)
                if window is not None or lockout is not None or reports:
                    # The reports go to this gateway's event log and, through its outbox,
                    # to the headend: it learns which box now holds the meter, commissioned.
                    events = [Publish(record.meter_id, "event", body) for body in reports]
                    store.apply(state, events, now, token_window=window, lockout=lockout)
            except StoreError as exc:
                raise ProvisionError(f"{record.meter_id}: {exc}") from None
        try:
            store.install_meter_keys(later)
        except StoreError as exc:
            raise ProvisionError(f"next_keys: {exc}") from None
        store.restore_executed_commands(executed)
    print(
        f"imported {len(planned)} meters from {args.file}"
        + (f", {len(later)} keys of later epochs" if later else "")
        + (f" and {len(executed)} executed command ids" if executed else "")
    )
    return 0


def _executed_commands(items: object) -> list[tuple[str, datetime, datetime]]:
    """The export's executed signed commands, checked."""
    if not isinstance(items, list):
        raise ProvisionError("executed_commands: must be a list")
    out = []
    for item in items:
        try:
            command_id = str(item["id"])
            expires = datetime.fromisoformat(str(item["expires"]))
            executed = datetime.fromisoformat(str(item["executed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProvisionError(f"executed_commands: {exc}") from None
        if expires.tzinfo is None or executed.tzinfo is None:
            raise ProvisionError("executed_commands: times must carry a time zone")
        out.append((command_id, expires, executed))
    return out
