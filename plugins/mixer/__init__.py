"""Built-in mixers: how TNT combines the global and local memories\x27 read-outs."""
