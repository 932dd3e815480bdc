"""Outline COVID-19 infection with a `covfast export`, with onnxruntime, NumPy and Pillow only (pydicom for DICOM).

    python examples/onnx_predict.py runs/NAME/export XRAY... --out masks

Writes <stem>.png infection masks (0/255) into --out and prints each X-ray's decision and severity. It runs
covfast/portable.py as a plain script (the file `covfast export` also copies beside model.onnx as onnx_predict.py):
neither covfast nor PyTorch is imported, and the masks are those of `covfast predict RUN ... --engine onnx`.
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "covfast" / "portable.py"), run_name="__main__")
