"""`covfast serve`: a web page (Gradio) to drop an X-ray on and see what a run says of it.

The page takes PNG, JPEG, 16-bit PNG and DICOM; it shows the X-ray with the infection in red and the lungs
outlined in cyan (where the run has a lung output), the decision with its probability, the infected pixels
and their share of the lungs, and offers the mask PNG. A file it cannot read gets one message on the page.
The model is loaded once; the page binds 127.0.0.1 unless told otherwise, and sends nothing anywhere.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from .config import Config
from .data import read_xray
from .errors import CovfastError
from .inference import Run, iter_outputs, load_run
from .metrics import severity_band_name
from .pages import DISCLAIMER
from .predict import Outline, outline
from .synth import is_synthetic

__all__ = ["analyse", "build_page", "serve"]


def _gradio():
    "Gradio, without its usage reports, or one line naming the extra that brings it."
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    try:
        import gradio as gr
    except ImportError:
        raise CovfastError('covfast serve needs Gradio: pip install "covfast[serve]"') from None
    return gr


def analyse(learn, run: Run, path: str | Path) -> Outline:
    "One uploaded X-ray through the run (the prediction path of `covfast predict`)."
    gray = read_xray(path)  # PNG, JPEG, 16-bit, DICOM; a file it cannot read is a CovfastError or PIL's own error
    items = pd.DataFrame({"image": [gray]})  # the pixels, not the path: uploads are not cached
    (_, output, _), = iter_outputs(learn, items, bs=1)
    return outline(output, gray, run.decision)


def _said(result: Outline, run: Run) -> str:
    "The page's reading of one X-ray, in Markdown."
    lines = []
    if result.decided:
        verdict = "above" if result.prob > run.decision.threshold else "at or below"
        lines.append(f"**{result.decided[0].upper() + result.decided[1:]}**: probability {result.prob:.3f}, {verdict} "
                     f"the run's threshold {run.decision.threshold:.3f}")
    lines.append(f"**Infected pixels**: {int(result.mask.sum())} of {result.mask.size} "
                 f"({100 * result.mask.mean():.1f}% of the image)")
    if result.lung is not None:
        share = ("no lungs found: no share of the lungs to give" if result.pct != result.pct else
                 f"{result.pct:.1f}% of the lungs (severity band {severity_band_name(result.pct)})")
        lines.append(f"**Infection % of lung**: {share}")
    else:
        lines.append("**Infection % of lung**: this run has no lung output (it was trained before covfast outlined the lungs)")
    return "\n\n".join(lines)


def build_page(run: str | Path, config: Config | None = None, device: str | None = None):
    "The Gradio page of a run (loaded once); `.launch()` it, or `serve`."
    gr = _gradio()
    config = config or Config()
    learn, loaded = load_run(run, config.runs_dir, device, precision=config.precision)
    downloads = Path(tempfile.mkdtemp(prefix="covfast-serve-"))
    synthetic = is_synthetic(loaded.spec.data_root)

    def handle(upload):
        if upload is None:
            return None, "", None
        path = Path(upload if isinstance(upload, str) else upload.name)
        try:
            result = analyse(learn, loaded, path)
        except Exception as e:  # a file it cannot read: the reason on the page, never a traceback
            reason = str(e) if isinstance(e, CovfastError) else f"not an image covfast can read ({e.__class__.__name__})"
            return None, f"**Could not read {path.name}**: {reason}. Drop a PNG, JPEG or DICOM chest X-ray.", None
        mask_path = downloads / f"{path.stem}-mask.png"
        Image.fromarray(result.mask.astype(np.uint8) * 255).save(mask_path)
        return result.overlay, _said(result, loaded), str(mask_path)

    notes = [f"**{DISCLAIMER}**"]
    if synthetic:
        notes.append("**Synthetic data**: this run was trained on X-rays made by `covfast synth`; what it outlines says "
                     "nothing about real X-rays.")
    with gr.Blocks(title=f"covfast: {loaded.name}") as page:
        gr.Markdown(f"# covfast: {loaded.name}\nDrop a chest X-ray (PNG, JPEG, 16-bit PNG or DICOM) to outline COVID-19 "
                    f"infection (red) and the lungs (cyan) with the run `{loaded.name}` ({loaded.spec.arch}).\n\n"
                    + "\n\n".join(notes))
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="X-ray", elem_id="xray")
                mask = gr.File(label="Infection mask (PNG, 0/255)", elem_id="mask", interactive=False)
            with gr.Column():
                shown = gr.Image(label="Outlined: infection red, lungs cyan", type="numpy", elem_id="overlay",
                                 interactive=False, height=512)
                said = gr.Markdown(elem_id="said")
        upload.change(handle, inputs=upload, outputs=[shown, said, mask])
    return page


def serve(
    run: str | Path,  # run directory or its name under runs_dir
    host: str = "127.0.0.1",  # the address to bind: this machine only, unless you mean to share it
    port: int = 7860,
    config: Config | None = None,
    device: str | None = None,
    say: Callable[[str], None] = print,
    block: bool = True,  # wait until Ctrl-C (False: return the running page, for tests)
):
    "Start the page of `build_page` and say where to open it."
    page = build_page(run, config, device)
    page.launch(server_name=host, server_port=port, inbrowser=False, share=False, quiet=True,
                prevent_thread_lock=True, show_error=False)
    say(f"covfast serve: open http://{host}:{port} in a browser (Ctrl-C stops it)")
    if not block:
        return page
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
    return page
