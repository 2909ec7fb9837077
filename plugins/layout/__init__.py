"""Built-in block layouts (Titans sec. 4: MAC, MAG, MAL, LMM; and attention baselines)."""
