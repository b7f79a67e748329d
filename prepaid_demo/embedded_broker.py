"""The embedded pure-Python broker (amqtt) for machines without ``mosquitto``.

Run as its own process (``python -m prepaid_demo.embedded_broker HOST PORT``) so the demo
supervises it like any other child, and amqtt's logging and tasks stay out of the view.
It serves MQTT 3.1.1 only, so the demo's gateway and viewer speak 3.1.1 to it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

PROG = "prepaid-demo-broker"


def broker_config(host: str, port: int) -> dict[str, object]:
    """One anonymous TCP listener on ``host:port``, no $SYS topics, quiet plugins."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


async def serve(host: str, port: int) -> int:
    try:
        from amqtt.broker import Broker  # noqa: PLC0415 - optional extra: prepaid-edge[demo]
    except ImportError:
        print(
            f"{PROG}: error: amqtt is not installed (pip install 'prepaid-edge[demo]')",
            file=sys.stderr,
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    broker = Broker(broker_config(host, port))
    await broker.start()
    print(f"ready: amqtt on {host}:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or not args[1].isdigit():
        print(f"{PROG}: error: usage: {PROG} HOST PORT", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve(args[0], int(args[1])))


if __name__ == "__main__":
    sys.exit(main())
