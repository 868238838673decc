"""Board agents: the HTTP client, the farm (pools, slots) and board runs (matrix, accuracy)."""
