"""docs/dlt645.md cannot drift from the code: its tables of commands, control commands, identifiers and status bits are the codec's and the shipped models', the bus time of each measured point is the frame sizes', the bus settings shown are the defaults (the line's too), the shipped Modbus maps it says have no clock have none, and its Python example runs as written against the simulator."""

from __future__ import annotations

import contextlib
import io
import re
import tomllib
from pathlib import Path

from gateway import dlt645_line
from gateway.config import DLT645_MEASURED, Dlt645Settings, RtuBus
from gateway.dlt645_io import COMMAND_CAPABILITY, exchange_bytes
from gateway.measured import READING_POINTS
from protocol.dlt645.frame import Function
from protocol.dlt645.meter_map import Dlt645Map, load_dlt645_map
from protocol.dlt645.terms import ControlCommand
from protocol.regmap import Capability, load_map, shipped_map_names

DOC = (Path(__file__).resolve().parents[2] / "docs" / "dlt645.md").read_text()


def _table(marker: str) -> list[list[str]]:
    """The rows of the table that follows ``<!-- rendered from {marker}``."""
    at = DOC.index(f"<!-- rendered from {marker}")
    lines = DOC[at:].splitlines()[1:]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.replace("`", "").strip() for cell in line.strip("|").split("|")])
    return rows


def _point_rows(model: Dlt645Map, names: list[str]) -> list[list[str]]:
    rows = []
    for name in names:
        p = model.point(name)
        fmt = p.format.text + (" (signed)" if getattr(p.format, "signed", False) else "")
        rows.append([p.name, p.di_text, fmt, p.unit, p.description])
    return rows


def test_the_commands_table_is_the_codecs() -> None:
    rows = _table("protocol/dlt645/frame.py")
    served = {
        Function.READ,
        Function.READ_FOLLOW_UP,
        Function.READ_ADDRESS,
        Function.WRITE,
        Function.BROADCAST_TIME,
        Function.CONTROL,
    }
    assert {int(r[0], 16) for r in rows} == served
    for row in rows:
        function = int(row[0], 16)
        replies = re.findall(r"`?([0-9A-F]{2})`?", row[2])
        if function != Function.BROADCAST_TIME:
            assert replies[0] == f"{0x80 | function:02X}"


def test_the_control_commands_table_is_the_enumeration() -> None:
    rows = _table("protocol.dlt645.messages.ControlCommand")
    assert [(int(r[0], 16), r[2]) for r in rows] == [
        (c.value, COMMAND_CAPABILITY[c].value) for c in ControlCommand
    ]


def test_the_identifier_tables_are_the_shipped_models() -> None:
    single = load_dlt645_map("dlt645_single_phase")
    three = load_dlt645_map("dlt645_three_phase")
    assert _table("protocol/maps/dlt645_single_phase.toml") == _point_rows(
        single, [p.name for p in single.points]
    )
    extra = [p.name for p in three.points if not single.has(p.name)]
    assert _table("protocol/maps/dlt645_three_phase.toml") == _point_rows(three, extra)
    assert {p.name for p in single.points} <= {p.name for p in three.points}


def test_the_status_bits_table_is_the_models() -> None:
    bits = load_dlt645_map("dlt645_single_phase").point("status").bits
    rows = _table("the status point of protocol/maps/dlt645_single_phase.toml")
    assert rows == [[str(i), name] for i, name in enumerate(bits)]


def test_the_bus_time_of_each_point_is_the_frame_sizes() -> None:
    model = load_dlt645_map("dlt645_single_phase")
    rows = _table("gateway.dlt645_io.exchange_bytes")
    names = ["energy_import", "status", *DLT645_MEASURED]
    expected = []
    for name in names:
        n = exchange_bytes(model.point(name))
        expected.append([name, str(n), f"{n * 11_000 / 2400:.1f}", f"{n * 11_000 / 9600:.1f}"])
    assert rows == expected


def test_the_measured_names_listed_are_the_ones_a_reading_carries() -> None:
    flat = " ".join(DOC.split())
    at = flat.index("`measured` names the points by their names in the models (")
    listed = flat[at:].split("(", 1)[1].split(")", 1)[0]
    assert re.findall(r"`(\w+)`", listed) == list(READING_POINTS)


def test_the_bus_settings_shown_are_the_defaults() -> None:
    (block,) = [
        b for b in re.findall(r"```toml\n(.*?)```", DOC, re.DOTALL) if "[buses.dlt645]" in b
    ]
    bus = RtuBus.model_validate(tomllib.loads(block)["buses"][0])
    shown = tomllib.loads(block)["buses"][0]["dlt645"]
    assert bus.dlt645_settings.measured == list(DLT645_MEASURED)
    defaults = Dlt645Settings().model_dump()
    for key in ("measured", "measured_every", "time_sync_h", "clock_drift_max_s"):
        assert shown[key] == defaults[key], key


def test_the_line_defaults_stated_are_a_dlt645_bus_s() -> None:
    flat = " ".join(DOC.split())
    at = flat.index("A DL/T 645 bus that leaves out `baud`, `parity` or `timeout_s`")
    said = flat[at:].split(";", 1)[0]
    parity = {"E": "even parity (8E1)", "N": "no parity (8N1)", "O": "odd parity (8O1)"}
    assert f"{dlt645_line.BAUD} baud" in said
    assert parity[dlt645_line.PARITY] in said
    assert f"{dlt645_line.REPLY_TIMEOUT_S} s" in said
    bus = RtuBus.model_validate(
        {"name": "d", "kind": "rtu", "device": "/dev/null", "protocol": "dlt645"}
    )
    line = (dlt645_line.BAUD, dlt645_line.PARITY, dlt645_line.REPLY_TIMEOUT_S)
    assert (bus.baud, bus.parity, bus.timeout_s) == line


def test_the_modbus_maps_said_to_have_no_clock_have_none() -> None:
    flat = " ".join(DOC.split())
    at = flat.index("no shipped Modbus map has a clock.** The Modbus maps (")
    listed = re.findall(r"`(\w+)`", flat[at:].split(")", 1)[0])
    assert listed == shipped_map_names()
    assert "clock" not in {c.value for c in Capability}
    for name in listed:
        for point in load_map(name).points:
            assert not {"date", "time", "clock"} & set(point.name.split("_")), (name, point)


def test_the_python_example_runs_as_written() -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOC, re.DOTALL)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/dlt645.md", "exec"), {"__name__": "__main__"})  # noqa: S102
    assert "MeterSnapshot(energy_import_wh=" in out.getvalue()
