"""Persistence: the state dir (lock, peer name, settings), and what the router keeps on disk."""
