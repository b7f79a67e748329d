"""The contracts between the gateway, the meters and the headend: register maps,
the token format, MQTT topics and payloads. Pure code: no I/O, no asyncio."""
