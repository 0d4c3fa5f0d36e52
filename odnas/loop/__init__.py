"""The Ax loop: the adapter (the one place that touches Ax internals), runner, metrics,
storage, config and driver."""
