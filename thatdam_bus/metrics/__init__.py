"""Prometheus metrics of a node (``instruments``), the opt-in ``/metrics`` endpoint (``endpoint``), and the small
health figures a heartbeat carries (``instruments.recent_dead_letters``)."""
