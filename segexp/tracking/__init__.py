"""MLflow: primitives (store), the outbox through outages, a run's tracker, sweeps, comparison, trained runs."""
