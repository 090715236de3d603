"""Engines: the code that hosts one model and runs a batch of stage requests."""
