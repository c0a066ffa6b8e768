"""The evaluate stage: metrics, replay of the best parameters on the test splits, and the report."""
