"""`scripts/demo`: a fresh CA and gateway, a fleet that enrolls and drives, a compromised unit and its
containment, and the closing summary table. Its units and dispatch use the paho client stack of
device_sim.fleet.
"""
