"""`python cli.py ARGS` does exactly what `covfast ARGS` does."""

from covfast.cli import main

if __name__ == "__main__":
    main()
