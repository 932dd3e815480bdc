"""Execute the notebooks in nbs/ at their defaults and save them with their outputs, cleaned as nbdev does.

    python nbs/run.py              # every notebook
    python nbs/run.py 01_train     # one

Cleaning drops what changes from run to run without saying anything: execution counts, cell metadata
other than tags, kernel metadata other than the kernel's name. Outputs (tables, figures) stay, so the
repository page shows them. tests/test_notebooks.py checks the committed files are clean and executes
them again.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

__all__ = ["clean", "execute"]

NBS = Path(__file__).resolve().parent


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    "Strip execution metadata in place (what nbdev_clean strips), keeping the outputs."
    nb.metadata = {"kernelspec": nb.metadata.get("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"}),
                   "language_info": {"name": "python"}}
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        if cell.cell_type == "code":
            cell.execution_count = None
            for output in cell.outputs:
                if "execution_count" in output:
                    output.execution_count = None
    return nb


def execute(path: Path, timeout: int = 900, nb: nbformat.NotebookNode | None = None,
            parameters: dict | None = None) -> nbformat.NotebookNode:
    """Run `path` (or `nb`, read from it) top to bottom in a scratch folder (its working files go there), outputs
    filled in. `parameters` (name: value) are set in a cell after the one tagged "parameters", as papermill does."""
    nb = nbformat.read(path, as_version=4) if nb is None else nb
    if parameters:
        where = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
        nb.cells.insert(where + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    # the kernel without MPLBACKEND picks the inline backend, so figures land in the outputs; this process keeps it
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    with tempfile.TemporaryDirectory(prefix="covfast-nb-") as scratch:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": scratch}}).execute(env=env)
    return nb


if __name__ == "__main__":
    names = sys.argv[1:] or [p.stem for p in sorted(NBS.glob("*.ipynb"))]
    for name in names:
        path = NBS / f"{Path(name).stem}.ipynb"
        start = time.time()
        nbformat.write(clean(execute(path)), path)
        print(f"{path.name}: executed and saved in {time.time() - start:.0f} s")
