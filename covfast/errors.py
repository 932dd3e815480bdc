"""The one exception type for bad user input; the CLI turns it into one line and exit code 2."""

import errno

__all__ = ["CovfastError", "format_problems", "os_problem"]


class CovfastError(ValueError):
    "Bad input from the user (a file, a folder, a value): the message names it and says how to fix it."


def format_problems(problems: list[str], limit: int = 10) -> str:
    "The first `limit` problems, one per line, and a count of the rest (so nothing is silently dropped)."
    lines = list(problems[:limit])
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more ({len(problems)} problems in all)")
    return "\n".join(lines)


# what to do about the operating system's refusals, by errno
_FIXES = {errno.ENOSPC: "free some space there (or point runs_dir elsewhere) and run the command again; "
                        "a training run resumes with --resume",
          errno.EDQUOT: "free some space there and run the command again",
          errno.EACCES: "give yourself write access there, or choose another folder",
          errno.EPERM: "give yourself write access there, or choose another folder",
          errno.EROFS: "the disk is read-only: choose a folder on another disk",
          errno.ENOTDIR: "a file stands where a folder should be: rename it, or choose another path",
          errno.EISDIR: "a folder stands where a file should be: choose another path",
          errno.ELOOP: "the path runs in a circle of symbolic links: fix the link, or choose another path",
          errno.ENOENT: "check the path",
          errno.ENAMETOOLONG: "choose a shorter path"}


def os_problem(e: OSError) -> str:
    "One line for an operating-system error: the path, what went wrong and what to do."
    where = e.filename or "a file covfast was writing"
    what = e.strerror or (str(e).splitlines()[0] if str(e) else e.__class__.__name__)
    return f"{where}: {what}; {_FIXES.get(e.errno, 'check the path and the disk')}"
