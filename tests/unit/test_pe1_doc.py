"""docs/pe1.md is what scripts/gen_pe1_doc.py renders from protocol/maps/pe1.toml (a changed map makes the check fail), every PE-1 register and flag has a meaning, the serial numbers shown are the simulator's, and no page of docs/ points to a file outside the repository's docs."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meter_sim.registers import MapLayout
from protocol.regmap import RegisterMap, load_map
from scripts import gen_pe1_doc

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_the_page_is_the_map_rendered() -> None:
    ran = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_pe1_doc.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr


def _with_lease_moved(regmap: RegisterMap) -> RegisterMap:
    points = tuple(
        dataclasses.replace(p, address=8) if p.name == "credit_lease" else p for p in regmap.points
    )
    return dataclasses.replace(regmap, points=points)


def test_a_changed_map_no_longer_matches_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    changed = _with_lease_moved(load_map("pe1"))
    monkeypatch.setattr(gen_pe1_doc, "load_map", lambda _name: changed)
    assert gen_pe1_doc.render() != (DOCS / "pe1.md").read_text()


def test_every_register_and_flag_is_on_the_page_with_its_meaning() -> None:
    page = (DOCS / "pe1.md").read_text()
    for point in load_map("pe1").points:
        assert point.description, point.name
        row = re.search(
            rf"^\| {point.address} \| {point.count} \| `{point.name}` \|.*$", page, re.M
        )
        assert row is not None, point.name
        assert point.description in row.group(0)
        assert len(point.bit_descriptions) == len(point.bits), point.name
        for n, (bit, meaning) in enumerate(zip(point.bits, point.bit_descriptions, strict=True)):
            assert f"| {n} | `{bit}` | {meaning} |" in page
    assert "| 6 | 2 | `credit_lease` |" in page
    assert "| credit lease |" in page


def test_the_serial_numbers_shown_are_the_simulators() -> None:
    regmap = load_map("pe1")
    page = (DOCS / "pe1.md").read_text()
    for seed, meter in gen_pe1_doc.SERIAL_EXAMPLES:
        assert f"| {seed} | {meter} | `{MapLayout(regmap, seed).serial_number(meter)}` |" in page
    simulator = (DOCS / "simulator.md").read_text()
    shown = re.search(r"meter (\d+) of\s+`--seed (\d+)` is `([^`]+)`", simulator)
    assert shown is not None
    meter, seed, serial = int(shown.group(1)), int(shown.group(2)), shown.group(3)
    assert MapLayout(regmap, seed).serial_number(meter) == serial
    assert "[pe1.md](pe1.md)" in simulator


def test_the_docs_point_only_to_files_in_the_repository() -> None:
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        text = page.read_text()
        assert "DESIGN.md" not in text, page.name
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}"
