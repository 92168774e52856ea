"""The simulated trucks: seeded unit behaviour and routes, EST enrollment, the fleet runner and the
dispatch service that witnesses what the gateway delivers. Every unit speaks MQTT through paho-mqtt,
driven by one asyncio loop (paho_loop), as a real telematics unit with a stock client library would.
"""
