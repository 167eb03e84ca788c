"""Meters: a generic Modbus driver reading register maps from TOML files."""
