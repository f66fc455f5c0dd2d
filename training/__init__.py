"""Training-side code: task data loading and the synthetic list-world suite."""
