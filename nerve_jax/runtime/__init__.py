"""Runtime settings for the process that runs nerve-jax (CPU backend flags, huge pages, logs)."""
