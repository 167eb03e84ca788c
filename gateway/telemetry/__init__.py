"""MQTT telemetry, events and remote commands."""
