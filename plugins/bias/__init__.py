"""Built-in bias plugins."""
