"""The reference headend stands alone on the contract (it imports only the standard library, paho, cryptography and jsonschema, and works copied out of the repository), its tokens and signed commands are what the gateway's own code accepts, it validates messages against the published schemas and finds every gap and duplicate in a meter's sequence."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from examples.headend import Headend, load_validators
from protocol.command_auth import b64url_encode, load_public_keys, verify_command

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "headend.py"
VECTORS = json.loads((ROOT / "tests" / "data" / "token_vectors.json").read_text())
#: What an integrator needs besides the standard library (docs/mqtt.md).
THIRD_PARTY = {"paho", "cryptography", "jsonschema"}
#: Our own top-level packages: none of them may be imported by the example.
OURS = {"gateway", "protocol", "meter_sim", "provisioning", "prepaid_demo", "examples",
        "tests", "scripts", "bench"}  # fmt: skip

#: Runs in a fresh interpreter: refuses every import of ours (the editable install would
#: otherwise find them), loads the copied example, runs ``SNIPPET`` and prints its JSON.
HARNESS = """
import importlib.abc, importlib.util, json, sys
OURS = {ours!r}

class RefuseOurs(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OURS:
            raise ModuleNotFoundError(f"the example imported {{name}}, which is ours")
        return None

sys.meta_path.insert(0, RefuseOurs())
spec = importlib.util.spec_from_file_location("headend", {path!r})
headend = importlib.util.module_from_spec(spec)
sys.modules["headend"] = headend
spec.loader.exec_module(headend)
{snippet}
assert not [m for m in sys.modules if m.split(".")[0] in OURS], sorted(sys.modules)
"""


def _copied_out(folder: Path) -> Path:
    """The example and the schema files alone in a folder, as an integrator copies them."""
    shutil.copy(EXAMPLE, folder / "headend.py")
    shutil.copytree(ROOT / "docs" / "schemas", folder / "schemas")
    return folder / "headend.py"


def _run_alone(folder: Path, snippet: str) -> subprocess.CompletedProcess[str]:
    path = _copied_out(folder)
    code = HARNESS.format(ours=OURS, path=str(path), snippet=textwrap.dedent(snippet))
    return subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_example_imports_only_the_standard_library_and_three_packages() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import ties the example to our tree"
            imported.add((node.module or "").split(".")[0])
    outside = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert outside == THIRD_PARTY


def test_the_example_copied_out_makes_the_vector_token_and_reads_its_schemas(
    tmp_path: Path,
) -> None:
    vector = VECTORS["online"][0]
    snippet = f"""
    from datetime import datetime
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex({VECTORS["online_signing_seed_hex"]!r}))
    token = headend.online_token(
        key, {vector["key_id"]!r}, {vector["meter_id"]!r}, counter={vector["counter"]},
        amount={vector["value"]}, currency={vector["currency"]!r},
        txn_id=bytes.fromhex({vector["txn_id_hex"]!r}),
        issued_at=datetime.fromisoformat({vector["issued_at"]!r}),
        expires_at=datetime.fromisoformat({vector["expires_at"]!r}))
    kinds = sorted(headend.Headend().validators)
    print(json.dumps({{"token": token, "kinds": kinds, "schemas": str(headend.SCHEMA_DIR)}}))
    """
    ran = _run_alone(tmp_path, snippet)
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["token"] == vector["token"]
    assert out["kinds"] == sorted(load_validators())
    assert out["schemas"] == str(tmp_path / "schemas")


def test_a_command_the_example_signs_is_what_the_gateway_accepts(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    snippet = f"""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex({key.private_bytes_raw().hex()!r}))
    body = headend.signed_command("disconnect", "gw-7", "PE1-000042", key_id="hq-2026",
                                  key=key, reason="customer moved out \u00e9")
    print(json.dumps(body))
    """
    ran = _run_alone(tmp_path, snippet)
    assert ran.returncode == 0, ran.stderr
    body = json.loads(ran.stdout)
    assert body["gateway"] == "gw-7"
    assert body["key_id"] == "hq-2026"
    keys = load_public_keys({"hq-2026": b64url_encode(key.public_key().public_bytes_raw())})
    expires = datetime.fromisoformat(body["expires"])
    now = datetime.now(UTC)
    assert timedelta(0) < expires - now <= timedelta(minutes=5)
    verify_command(body, keys, now, expires)  # raises CommandAuthError when not accepted
    assert not list(load_validators()["command"].iter_errors(body))


def test_the_example_copied_out_runs_as_a_program(tmp_path: Path) -> None:
    ran = _run_alone(
        tmp_path,
        """
        try:
            headend.main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0
        """,
    )
    assert ran.returncode == 0, ran.stderr
    assert "--command CMD GATEWAY/METER" in ran.stdout


def _reading(seq: int, meter: str = "m1", **extra: object) -> bytes:
    body = {
        "v": 1,
        "gateway": "gw",
        "meter": meter,
        "seq": seq,
        "ts": "2026-11-28T12:00:00.000Z",
        "kind": "reading",
        "energy_import_wh": 100 * seq,
        "power_w": 5,
        "voltage_v": 230.0,
        "relay_closed": True,
        "charged": 3,
    }
    return json.dumps(body | extra).encode()


def test_in_order_messages_are_clean() -> None:
    h = Headend()
    for seq in range(1, 6):
        h.handle("prepaid/v1/gw/meters/m1/reading", _reading(seq))
    gw = h.gateways["gw"]
    assert (gw.readings, gw.violations, gw.gaps_seen, gw.missing, gw.duplicates) == (5, 0, 0, 0, 0)


def test_gap_is_seen_requested_and_filled_by_resend() -> None:
    h = Headend()
    for seq in (1, 2, 5, 6):
        h.handle("prepaid/v1/gw/meters/m1/reading", _reading(seq))
    gw = h.gateways["gw"]
    assert gw.gaps_seen == 1
    assert gw.missing == 2
    assert h.gap_requests == [("gw", "m1", 3)]
    for seq in (3, 4, 5):  # the resend starts at 3 and repeats what was already there
        h.handle("prepaid/v1/gw/meters/m1/reading", _reading(seq))
    assert gw.missing == 0
    assert gw.duplicates == 1


def test_schema_violations_are_counted() -> None:
    h = Headend()
    h.handle("prepaid/v1/gw/meters/m1/reading", b"{")
    h.handle("prepaid/v1/gw/meters/m1/reading", _reading(1, energy_import_wh=-5))
    h.handle("prepaid/v1/gw/meters/m1/reading", _reading(2, meter="m2"))
    h.handle("prepaid/v1/gw/meters/m1/reading", _reading(3, surprise=True))
    assert h.gateways["gw"].violations == 4
    assert h.gateways["gw"].readings == 0
