"""The verification's default tolerance, on its own so that the command line's help needs no torch."""

# Allowed max abs difference, relative to the output's own scale (max |value|, at least 1).
DEFAULT_TOLERANCE = 1e-5
