"""Built-in monitors: diagnostics and regularizers that hook into the trainer's events."""
