"""Static-shape batching shared by generation, scoring and training."""
