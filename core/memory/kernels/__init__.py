"""Hand-written autograd Functions of the memory engine, each equal to a plain reference."""
