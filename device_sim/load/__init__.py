"""Load runs (`fleet-sim load`): thousands of units from one process, bulk identities issued straight
into a data directory, percentiles, a report and its PNG chart, and /proc sampling of the broker. It
uses the lean client stack (client.py: the sans-IO gateway/mqtt/client.py for the handshake, one
asyncio Protocol per unit, pre-encoded PUBLISHes), not paho, so that the generator does not cost as
much CPU as the broker it measures. The benchmarks drive their brokers with the same stack.
"""
