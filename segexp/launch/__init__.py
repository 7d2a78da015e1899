"""Hydra callbacks around runs and sweeps: the run-folder guard, the SLURM request check and
pre-emption signals, the MLflow sweep parent."""
