"""Print the README's shell commands a newcomer runs, one per line, verbatim.

`setup`: the two set-up commands (the bash block under "Set-up: two commands");
`after-demo`: the commands the README says work as written after `covfast demo`.
Used by .ci/newcomer, so CI runs exactly what the README says; tests/test_demo.py checks both are found
and runs the after-demo commands after a small demo.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = {"setup": "## Set-up: two commands", "after-demo": "these work as written"}


def readme_commands(which: str, text: str | None = None) -> list[str]:
    "The commands of the first ```bash block after the README's marker for `which`."
    text = README.read_text() if text is None else text
    start = text.index(MARKERS[which])
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    if block is None:
        raise ValueError(f"no bash block after {MARKERS[which]!r} in {README}")
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


if __name__ == "__main__":
    print("\n".join(readme_commands(sys.argv[1])))
