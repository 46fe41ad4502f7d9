"""Alias of `python -m recipes.tools.bench` (`make bench`), kept for the command users know."""
from recipes.tools.bench import main

if __name__ == "__main__":
    main()
