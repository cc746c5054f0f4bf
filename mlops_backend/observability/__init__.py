"""What happened to each request: request ids, the per-request observation, metrics, usage, log lines."""
