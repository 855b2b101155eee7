"""Evaluation tasks (method §9): needle in a haystack with real essays, passkey retrieval."""
