"""The node runtime: identity, transport choice, handler lifecycle and heartbeats."""
