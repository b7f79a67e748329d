"""A prepaid meter simulator that stands in for hardware, over Modbus TCP and RTU."""
