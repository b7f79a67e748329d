"""The events provisioning queues for the headend through the store's outbox (sent on
``meters/{id}/event`` like the gateway's own; ``protocol/event_kinds.py`` defines them)."""

from __future__ import annotations

from protocol.event_kinds import EventKind

#: a commissioning report: ``reason`` pass or fail, ``details.checks``
COMMISSIONED = EventKind.COMMISSIONED.value
#: ``enrol --update``: ``details.changed`` (new values), ``details.commissioning_needed``
ENROLMENT_UPDATED = EventKind.ENROLMENT_UPDATED.value
#: ``enrol --remove``: ``details.balance``, ``debt`` and ``currency`` when removed
ENROLMENT_REMOVED = EventKind.ENROLMENT_REMOVED.value

PROVISIONING_EVENTS = (COMMISSIONED, ENROLMENT_UPDATED, ENROLMENT_REMOVED)
