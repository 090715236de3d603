"""Benchmarks: each module is one command that prints a table of ratios against a plain baseline."""
