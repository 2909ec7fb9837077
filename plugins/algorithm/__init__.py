"""Built-in algorithm plugins."""
