"""The gateway's exception root. Every error the gateway raises on purpose derives from
``GatewayError``, and its name says what failed: ``ConfigError`` (the configuration),
``StoreError`` and ``StoreLockError`` (the store), ``MeterIOError`` (a meter or its bus),
``MqttLinkError`` (the broker), ``SettingsError`` (a tariff or settings document),
``StartupError`` (the gateway refuses to start). Catch ``GatewayError`` for "anything
the gateway reported", the subclass for one kind; tests/unit/test_exception_roots.py
holds every exception class in gateway/ to this root."""

from __future__ import annotations


class GatewayError(Exception):
    """An error the gateway reports on purpose (not a fault of its own code)."""
