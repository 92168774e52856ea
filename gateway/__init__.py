"""fleetgate: the gateway (CA, EST enrollment, mTLS MQTT broker); see docs/architecture.md."""

from gateway.app import compiled

compiled.choose()  # before any module of the per-message path is imported: compiled, or from sources
