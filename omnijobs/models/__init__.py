"""Tiny local models of the real classes, for tests and the embedded demo."""
