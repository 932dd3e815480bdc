"""`python -m covfast ...` runs the CLI (and lets launchers such as `accelerate launch -m covfast` start it)."""

from .cli import main

if __name__ == "__main__":
    main()
