"""How a memory rule runs: the recurrent oracle, the chunked training path and its parts."""
