"""What a memory plugin implements: the Miras axes, the rule they make, and its state."""
