"""ganserve.server."""
