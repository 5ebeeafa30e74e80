"""ganserve.clients."""
