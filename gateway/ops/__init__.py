"""What operators see: the admin port, metrics, logs, and lifecycle events."""
