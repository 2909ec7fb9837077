"""Built-in task plugins: where training sequences come from."""
