"""Jobs over prediction files: reading and writing tables, metrics."""
