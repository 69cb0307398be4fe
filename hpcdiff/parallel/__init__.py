"""The only modules that know about MPI (ranks, collectives, checkpoints) and dask clusters."""
