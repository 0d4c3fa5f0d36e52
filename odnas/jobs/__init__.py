"""Training jobs: the TorchX component, the trial entry point, training. Never imports Ax."""
