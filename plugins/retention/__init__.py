"""Built-in retention plugins."""
