"""ganserve.training."""
