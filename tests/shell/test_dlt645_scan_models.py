"""`meter-provision scan --addresses` on DL/T 645 buses names each meter's model as docs/dlt645.md says, a meter that answers phase B's voltage three-phase and one that does not single-phase, through the installed console scripts against simulated meters of both shipped models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shell.test_docs_simulator_page import _free_port, served, sh

pytestmark = pytest.mark.asyncio

#: The simulator serves one model per bus: each bus holds one model's meter, at its own address.
MODELS = {"dlt-1": ("dlt645_single_phase", 1), "dlt-2": ("dlt645_three_phase", 2)}
ADDRESSES = "000000000001-000000000002"


def _rows(out: str) -> dict[str, str]:
    """The scan table's rows: address -> model."""
    lines = out.splitlines()
    assert lines[0].split() == ["address", "map", "detail"], lines
    return {line.split()[0]: line.split()[1] for line in lines[1:]}


async def test_scan_names_single_and_three_phase_meters_by_their_answers(tmp_path: Path) -> None:
    ports = {bus: _free_port() for bus in MODELS}
    one, three = (
        f"meter-sim serve --protocol dlt645 --map {model} --meters 1 --first-address {first} "
        f"--baud 0 --rtu-tcp 127.0.0.1:{ports[bus]} --seed {first}"
        for bus, (model, first) in MODELS.items()
    )
    init = await sh("meter-provision init --dir site --gateway-id gw-scan", tmp_path)
    assert init.rc == 0, init
    config = tmp_path / "site" / "gateway.toml"
    config.write_text(
        config.read_text()
        + "".join(
            f'\n[[buses]]\nname = "{bus}"\nkind = "rtu"\nprotocol = "dlt645"\n'
            f'device = "socket://127.0.0.1:{port}"\nparity = "E"\n'
            for bus, port in ports.items()
        )
    )
    found: dict[str, dict[str, str]] = {}
    async with served(one, tmp_path), served(three, tmp_path):
        for bus in MODELS:
            scan = await sh(
                f"meter-provision scan --config site/gateway.toml --bus {bus} "
                f"--addresses {ADDRESSES}",
                tmp_path,
            )
            assert scan.rc == 0, (bus, scan)
            assert "Traceback" not in scan.out + scan.err
            assert "2/2 addresses, 1 found" in scan.err, scan.err
            found[bus] = _rows(scan.out)
    expected = {bus: {f"{first:012d}": model} for bus, (model, first) in MODELS.items()}
    assert found == expected, found
