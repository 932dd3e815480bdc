"""The one exception type for bad user input; the CLI turns it into one line and exit code 2."""

import errno

__all__ = ["CovfastError", "format_problems", "os_problem", "environment_problem"]


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


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment_problem(e: BaseException) -> str | None:
    """One line for an installation that cannot run covfast, naming what to do; None for any other error.
    A torchvision built for another torch fails at fastai's import with 'operator torchvision::nms does not exist'."""
    if not isinstance(e, (RuntimeError, ImportError, AttributeError)) or "torchvision::" not in str(e):
        return None
    torch, vision = _version("torch").split("+")[0], _version("torchvision")
    try:
        major, minor = (int(p) for p in torch.split(".")[:2])
    except ValueError:
        match, pin = "each torch release has its own torchvision", ""
    else:  # torchvision 0.(minor + 15) goes with torch 2.minor
        match, pin = f"torchvision 0.{minor + 15}.* goes with torch {major}.{minor}", f"0.{minor + 15}.*"
    return (f"torchvision {vision} was built for another torch than the installed torch {torch} ({match}): install "
            f"the two together from one index, e.g. pip install --force-reinstall 'torch=={torch}' 'torchvision=={pin}' "
            f"--index-url https://download.pytorch.org/whl/cpu")
