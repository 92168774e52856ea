"""fleetgate against other brokers (Mosquitto, optionally amqtt) on this machine: `scripts/bench`, or
`python -m benchmarks.main` from the checkout root. Not part of the installed package (it is not in
the wheel): it runs from a checkout only. Every case drives the brokers with the lean client stack of
device_sim.load (sans-IO, on gateway/mqtt/client.py), the same certificates and the same topics.
"""
