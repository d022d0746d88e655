"""Small servers that speak real protocols, for tests that cannot run the real thing."""
