"""Write every MQTT payload's JSON Schema into docs/schemas/ (a test checks they are current)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from protocol.mqtt import json_schemas


def render() -> dict[str, str]:
    """File name -> file text for every schema."""
    return {
        f"{name}.schema.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for name, schema in json_schemas().items()
    }


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/schemas")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (folder / name).write_text(text)
        print(folder / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
