"""pyproject.toml is written so that installing the package prints no setuptools deprecation: the licence is an SPDX string and the build needs a setuptools that reads one."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_licence_is_an_spdx_expression_not_a_table() -> None:
    licence = PROJECT["project"]["license"]
    assert isinstance(licence, str), "a TOML table here is deprecated by setuptools"
    assert re.fullmatch(r"[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*", licence)
    classifiers = PROJECT["project"].get("classifiers", [])
    assert not [c for c in classifiers if c.startswith("License ::")], "deprecated with SPDX"


def test_the_build_needs_a_setuptools_that_reads_spdx_licences() -> None:
    (requirement,) = [r for r in PROJECT["build-system"]["requires"] if "setuptools" in r]
    found = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", requirement)
    assert found is not None, requirement
    assert int(found.group(1)) >= 77  # setuptools 77 is the first to read `license = "..."`
