"""`make demo`: a whole prepaid-edge site (simulator, broker, gateway) in one command,
watched through the gateway's MQTT topics the way a headend would."""
