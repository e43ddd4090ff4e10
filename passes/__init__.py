"""Graph-to-graph transformations."""
