"""The running gateway polls, cuts off and reconnects a foreign DL/T 645 meter, the `dlt645` package's server (with remote control added on its own parts, since it has none) over socket://, with a real Mosquitto: a meter enrolled with nothing to spend is read, its reading published and its relay tripped (1AH, status word 3 reads 0050); an online top-up closes it again (1CH, 0000), and what more its register counts is billed.

What their server cannot model, and this test therefore does not ask of it: remote control
(it has no 1CH; the subclass from test_dlt645_interop adds trip and direct close on its own
password check and data map, nothing else: no close allowed, alarm or protected supply),
and a clock (it answers the date and time identifiers with zeros, which the gateway logs as
"clock not read", and parses broadcast time year first), so the time sync is tested on our
simulator only.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.config import GatewayConfig
from gateway.core.meter_state import enrol
from gateway.core.states import CreditState
from gateway.dlt645_io import control_secret
from gateway.store import MeterRecord, Store
from protocol.tokens.keys import derive_meter_key
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.shell.test_dlt645_interop import (
    FOREIGN,
    STATUS,
    RemoteControlledServer,
    their_server,
)
from tests.support.gateway_env import VENDING_KEY, GatewayWorld, fast_settings, online_token
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

METER = "DLT-FOREIGN"
#: The password their server is given (level 02, 000000) and any operator code.
SECRET = control_secret("02000000", "00000007")
TOPIC = f"prepaid/v1/gw-test/meters/{METER}"


@pytest_asyncio.fixture
async def headend(mosquitto: Mosquitto) -> AsyncIterator[tuple[TestClient, MessageLog]]:
    with TestClient(mosquitto, "headend-test") as client:
        client.subscribe("prepaid/v1/gw-test/#")
        yield client, MessageLog(client)


async def test_the_gateway_cuts_off_and_reconnects_their_meter(
    tmp_path: Path, mosquitto: Mosquitto, headend: tuple[TestClient, MessageLog]
) -> None:
    client, log = headend
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    key = derive_meter_key(VENDING_KEY, METER, 0)
    now = datetime.now(UTC)
    record = MeterRecord(
        METER, "dlt-1", FOREIGN.number, "dlt645_single_phase", key.secret, 0, control_secret=SECRET
    )
    with Store.open(world.store_path) as store:
        store.add_meter(record, enrol(METER, fast_settings(), now, opening_balance=0), now)
    async with their_server(RemoteControlledServer) as server:

        def word() -> str:
            item = server.get_data_item(STATUS)
            assert item is not None
            return str(item.value)

        # 60 gateway seconds a second: 20 Wh between two polls is a plausible load.
        _, start = sim_start(60)
        data = world.config_data(broker=(mosquitto.host, mosquitto.port), speed=60, start=start)
        data["buses"].append(
            {
                "name": "dlt-1",
                "kind": "rtu",
                "protocol": "dlt645",
                "device": f"socket://127.0.0.1:{server.server.port}",
                "timeout_s": 1.0,
                "retries": 0,
            }
        )
        async with running_gateway(GatewayConfig.model_validate(data)) as runner:
            gw = runner.gateway
            # Read, published, and tripped at once: nothing to spend.
            readings = await eventually(lambda: log.of(METER, "reading"), 20, "a reading")
            assert readings[0]["energy_import_wh"] == 1_234_560
            await eventually(lambda: word() == "0050", 20, "their meter tripped (1AH)")
            await eventually(lambda: gw.meters[METER].state.relay_closed is False, 20, "read back")
            assert gw.meters[METER].state.credit is CreditState.DISCONNECTED
            # An online top-up closes it again (1CH), read back from their status word.
            await runner.mqtt_ready.wait()
            token = online_token(0, 1, 8000, meter=METER)
            cmd = {"v": 1, "id": "topup-1", "cmd": "topup", "token": token}
            client.publish(f"{TOPIC}/cmd", json.dumps(cmd).encode())
            await eventually(lambda: word() == "0000", 20, "their meter closed (1CH)")
            await eventually(lambda: gw.meters[METER].state.relay_closed, 20, "closed, read back")
            assert gw.meters[METER].state.credit is not CreditState.DISCONNECTED
            # It bills what their register counts: 20 Wh more at 100 a kWh.
            assert server.set_00(0x00010000, 1234.58)
            await eventually(lambda: gw.meters[METER].state.ledger.balance == 7998, 20, "billed")
