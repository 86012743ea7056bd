"""Once-for-All."""
