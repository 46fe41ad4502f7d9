"""Alias of `python -m recipes.tools.chaos` (`make chaos`), kept for the command users know."""
import sys

from recipes.tools.chaos import main

if __name__ == "__main__":
    sys.exit(main())
