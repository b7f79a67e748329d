"""The events provisioning queues for the headend through the store's outbox (sent on
``meters/{id}/event`` like the gateway's own; docs/mqtt.md lists them)."""

from __future__ import annotations

#: a commissioning report: ``reason`` pass or fail, ``details.checks``
COMMISSIONED = "commissioned"
#: ``enrol --update``: ``details.changed`` (new values), ``details.commissioning_needed``
ENROLMENT_UPDATED = "enrolment_updated"
#: ``enrol --remove``: ``details.balance``, ``debt`` and ``currency`` when removed
ENROLMENT_REMOVED = "enrolment_removed"

PROVISIONING_EVENTS = (COMMISSIONED, ENROLMENT_UPDATED, ENROLMENT_REMOVED)
