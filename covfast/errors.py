"""The one exception type for bad user input; the CLI turns it into one line and exit code 2."""

__all__ = ["CovfastError", "format_problems"]


class CovfastError(ValueError):
    "Bad input from the user (a file, a folder, a value): the message names it and says how to fix it."


def format_problems(problems: list[str], limit: int = 10) -> str:
    "The first `limit` problems, one per line, and a count of the rest (so nothing is silently dropped)."
    lines = list(problems[:limit])
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more ({len(problems)} problems in all)")
    return "\n".join(lines)
