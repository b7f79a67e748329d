"""Names vulture reports as unused that are used on purpose, by group, with the reason.

`make lint` runs vulture at 60% confidence (pyproject's [tool.vulture]): unused imports,
variables, functions, methods, classes and attributes, and unreachable code. Add a name
here only with its reason; code that nothing but tests uses goes (what the tests need
moves into tests/support)."""

from vulture.whitelist_utils import Whitelist

_ = Whitelist()

# __exit__ / __aexit__ take the exception triple whether they read it or not
_.et
_.tb
_.exc_type

# paho and pydantic read these by name: the client's callbacks, MQTT 5 properties
_.on_connect
_.on_disconnect
_.on_publish
_.on_subscribe
_.on_message
_.on_socket_open
_.on_socket_close
_.on_socket_register_write
_.on_socket_unregister_write
_.SessionExpiryInterval
_.username

# fields of documented messages and schemas (protocol/messages.py, the health summary),
# written by serialisation, read by the headend
_.current_a
_.current_l2_a
_.current_l3_a
_.voltage_l2_v
_.voltage_l3_v
_.power_l1_w
_.power_l2_w
_.power_l3_w
_.power_factor
_.frequency_hz
_.forecast_exhaustion
_.bus_faults
_.meters_total
_.meters_online
_.storage
_.meters_quarantined
_.relay_mismatches

# counters in the status file (vars(Counters)) and the ports' and pollers' counters that
# tests and benchmarks read
_.readings
_.poll_failures
_.batches
_.relay_faults
_.storage_failures
_.dropped_while_degraded
_.lease_grants
_.polls
_.resent
_.resets
_.connects
_.refusals
_.stray_frames
_.open_connections

# enumeration members and meaning tables: the protocols' full vocabulary, rendered into
# docs by scripts/ and checked by the docs tests
_.ACKNOWLEDGE
_.SERVER_DEVICE_FAILURE
_.GATEWAY_PATH_UNAVAILABLE
_.SERVER_BUSY
_.LOW_FIRST
_.WRITE_ADDRESS
_.FREEZE
_.CHANGE_BAUD
_.CHANGE_PASSWORD
_.CLEAR_DEMAND
_.CLEAR_METER
_.CLEAR_EVENTS
_.BAUD_FIXED
_.YEAR_ZONES
_.DAY_SLOTS
_.MEANINGS
_.COMMAND_MEANINGS
_.CREDIT_STATE_MEANINGS
_.REASON_MEANINGS
_.RELAY_MEANINGS
_.PROVISIONING_EVENTS

# the store's synchronous faces (tests, provisioning; the gateway awaits the *_async ones)
_.claim_command
_.token_applied
_.last_seq
_.outbox_pending
_.outbox_since
_.purge_acked
_.schema_version

# the simulator's API for tests and docs/simulator.md
_.VirtualClock
_.tcp_address
_.tcp_endpoint_of
_.requests_served
_.dlt645_meter
_.set_clock_offset

# library API for a headend, a vending service or a site's own maps (docs/mqtt.md,
# docs/tokens.md, docs/dlt645.md, docs/reliability.md), with their tests
_.sign_command
_.from_hex
_.load_public_key
_.json_schemas
_.load_map_file
_.load_dlt645_map_file
_.exchange_bytes
_.conserved
