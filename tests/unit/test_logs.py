"""JSON log lines carry time, level, logger, message and structured extra fields."""

from __future__ import annotations

import json
import logging

from gateway.logs import JsonFormatter


def test_json_log_line() -> None:
    record = logging.makeLogRecord(
        {
            "name": "gateway.service",
            "levelname": "WARNING",
            "levelno": 30,
            "msg": "meter %s relay %s",
            "args": ("PE1-000001", "open"),
            "meter": "PE1-000001",
        }
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "meter PE1-000001 relay open"
    assert line["level"] == "WARNING"
    assert line["logger"] == "gateway.service"
    assert line["meter"] == "PE1-000001"
    assert line["ts"].endswith("+00:00")
