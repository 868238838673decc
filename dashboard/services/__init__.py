"""Dashboard services: the owner process's store, background jobs, cached reads and uploads."""
