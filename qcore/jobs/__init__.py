"""Jobs: the typed contract, the Dask cluster and runner, and what each job kind does on a worker."""
