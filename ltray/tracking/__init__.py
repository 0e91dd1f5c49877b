"""MLflow tracking: store resolution and checks, a local tracking server, sweep/trial runs, artifacts and summaries."""
