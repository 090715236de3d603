"""The HTTP edge: FastAPI routes that call one core function each."""
