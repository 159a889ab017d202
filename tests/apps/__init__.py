"""Tiny apps that tests start in separate server processes."""
