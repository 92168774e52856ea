"""Attacks against a live gateway (`fleet-sim attack`): the scenario catalogue and the arena each one
runs in, forged and borrowed identities, misbehaving traffic, the fleet-wide reconnect storm, and live
protocol fuzzing. The scenarios use the paho client stack of device_sim.fleet; the fuzzer alone writes
raw bytes (encoded with gateway.mqtt.codec, or malformed by hand) over its own TLS connections.
"""
