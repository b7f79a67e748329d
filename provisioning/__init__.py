"""The field engineer's CLI: gateway identity, bus scan, meter enrolment, commissioning."""
