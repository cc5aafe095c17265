import sys

from .cli import main

# Guarded: the worker processes of a replay import this module again.
if __name__ == "__main__":
    sys.exit(main())
