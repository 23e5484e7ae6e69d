"""Stage 3: deliver batches to a MemOS target exactly once."""
