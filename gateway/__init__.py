"""The prepaid-edge gateway: polls meters, keeps the credit ledger, enforces supply
locally and syncs to the headend over MQTT."""
