"""Exits 1 with a reason on stderr, as a module whose weights are missing does."""

import sys

print("loading weights from /models/liver.pt", file=sys.stderr)
print("FileNotFoundError: /models/liver.pt", file=sys.stderr)
sys.exit(1)
