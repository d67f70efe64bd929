"""rapport."""
