"""The job store: Postgres (or SQLite for the embedded default) is the source of truth."""
