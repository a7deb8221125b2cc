"""Tooling beside the data path: the feed generator, the verifier and the demo."""
