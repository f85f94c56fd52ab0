"""The drawing page: a person draws a digit, the trained network answers live (`src/serve.py`)."""
