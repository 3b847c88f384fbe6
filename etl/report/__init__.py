"""What runs did: run records, the summary, logs and progress, metrics, run history."""
