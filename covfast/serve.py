"""`covfast serve`: a web page (Gradio) to drop an X-ray on and see what a run says of it.

The page takes PNG, JPEG, 16-bit PNG and DICOM; it shows the X-ray with the infection in red and the lungs
outlined in cyan (where the run has a lung output), the decision with its probability, the infected pixels
and their share of the lungs, and offers the mask PNG. A file it cannot read gets one message on the page.
The model is loaded once; the page binds 127.0.0.1 unless told otherwise, and sends nothing anywhere.
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from .config import Config
from .data import read_xray
from .decision import EMPTY, FLAGGED, OUTLINED
from .errors import CovfastError
from .figures import readable
from .inference import Run, iter_outputs, load_run, uncalibrated_note
from .metrics import severity_band_name
from .outputs import figure_labels
from .pages import DISCLAIMER
from .predict import Outline, outline
from .synth import is_synthetic

__all__ = ["PAGE_WIDTH", "analyse", "build_page", "serve"]

# the pictures on the page are at least this many pixels wide (a 64-px X-ray is enlarged, pixels as blocks)
PAGE_WIDTH = 512


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
    "The page's reading of one X-ray, in Markdown: the verdict first, in the words every covfast file uses."
    threshold = f"{run.decision.threshold:.4g}"
    p = f"the image head's probability {result.prob:.3f}" if result.prob == result.prob else ""
    why = {OUTLINED: f"{p}, above the run's threshold {threshold}; the outline is in red" if p else "the outline is in red",
           FLAGGED: f"{p} is above the run's threshold {threshold}, but no pixel reached the infection rule: there is "
                    f"no outline to show, and no severity to grade" if p else
                    "the image-level decision kept this X-ray, but no pixel reached the infection rule",
           EMPTY: f"{p}, at or below the run's threshold {threshold}: the mask is empty" if p else "no pixel was outlined"}
    lines = [f"**{result.decided}**: {why[result.decided]}"]
    lines.append(f"**Infected pixels**: {int(result.mask.sum())} of {result.mask.size} "
                 f"({100 * result.mask.mean():.1f}% of the image)")
    if result.lung is not None:
        share = ("no lungs found: no share of the lungs to give" if result.pct != result.pct else
                 f"{result.pct:.1f}% of the lungs (severity band {severity_band_name(result.pct)})")
        lines.append(f"**Infection % of lung**: {share}")
    else:
        lines.append("**Infection % of lung**: this run has no lung output (it was trained before covfast outlined the lungs)")
    labels = figure_labels()
    lines += [f"**{labels[column]}**: {value:.4g}" for column, value in result.figures.items()]
    return "\n\n".join(lines)


def build_page(run: str | Path, config: Config | None = None, device: str | None = None):
    """The Gradio page of a run (loaded once); `.launch()` it, or `serve`. Uploads and the masks offered for
    download live in one temporary folder of the page's own, `page.covfast_cleanup()` removes it (`serve` does
    when it stops, and so does the interpreter's exit)."""
    gr = _gradio()
    config = config or Config()
    learn, loaded = load_run(run, config.runs_dir, device, precision=config.precision)
    work = Path(tempfile.mkdtemp(prefix="covfast-serve-"))
    downloads = work / "masks"
    downloads.mkdir()
    # Gradio keeps each upload (and each picture it sends) in its cache folder, /tmp/gradio unless told: this
    # page's own folder instead, so that nothing of a patient's X-ray outlives the page
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
    synthetic = is_synthetic(loaded.spec.data_root)

    def handle(upload):
        if upload is None:
            return None, None, "", None
        path = Path(upload if isinstance(upload, str) else upload.name)
        try:
            result = analyse(learn, loaded, path)
        except Exception as e:  # a file it cannot read: the reason on the page, never a traceback
            reason = str(e) if isinstance(e, CovfastError) else f"not an image covfast can read ({e.__class__.__name__})"
            return None, None, f"**Could not read {path.name}**: {reason}. Drop a PNG, JPEG or DICOM chest X-ray.", None
        mask_path = downloads / f"{path.stem}-mask.png"
        Image.fromarray(result.mask.astype(np.uint8) * 255).save(mask_path)
        return (readable(np.repeat(result.gray[..., None], 3, axis=2), PAGE_WIDTH), readable(result.overlay, PAGE_WIDTH),
                _said(result, loaded), str(mask_path))

    notes = [f"**{DISCLAIMER}**"]
    if synthetic:
        notes.append("**Synthetic data**: this run was trained on X-rays made by `covfast synth`; what it outlines says "
                     "nothing about real X-rays.")
    uncalibrated = uncalibrated_note(loaded)
    if uncalibrated:
        notes.append(f"**Not calibrated**: {uncalibrated}")
    with gr.Blocks(title=f"covfast: {loaded.name}") as page:
        gr.Markdown(f"# covfast: {loaded.name}\nDrop a chest X-ray (PNG, JPEG, 16-bit PNG or DICOM) to outline COVID-19 "
                    f"infection (red) and the lungs (cyan) with the run `{loaded.name}` ({loaded.spec.arch}).\n\n"
                    + "\n\n".join(notes))
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="X-ray", elem_id="xray")
                xray = gr.Image(label="The X-ray, as covfast read it", type="numpy", elem_id="xray-shown",
                                interactive=False, height=PAGE_WIDTH)
                mask = gr.File(label="Infection mask (PNG, 0/255)", elem_id="mask", interactive=False)
            with gr.Column():
                shown = gr.Image(label="Outlined: infection red, lungs cyan", type="numpy", elem_id="overlay",
                                 interactive=False, height=PAGE_WIDTH)
                said = gr.Markdown(elem_id="said")
        upload.change(handle, inputs=upload, outputs=[xray, shown, said, mask])

    def cleanup() -> None:
        shutil.rmtree(work, ignore_errors=True)
    page.covfast_cleanup = cleanup
    atexit.register(cleanup)
    return page


def serve(
    run: str | Path,  # run directory or its name under runs_dir
    host: str = "127.0.0.1",  # the address to bind: this machine only, unless you mean to share it
    port: int = 7860,
    config: Config | None = None,
    device: str | None = None,
    say: Callable[[str], None] = print,
    block: bool = True,  # wait until Ctrl-C (False: return the running page, for tests; `page.close()` stops it)
):
    "Start the page of `build_page` and say where to open it; its temporary files go when it stops."
    page = build_page(run, config, device)
    try:
        page.launch(server_name=host, server_port=port, inbrowser=False, share=False, quiet=True,
                    prevent_thread_lock=True, show_error=False)
    except OSError as e:
        page.covfast_cleanup()
        if e.errno in (errno.EADDRINUSE, None) and "port" in str(e).lower():
            raise CovfastError(f"port {port} on {host} is in use (another covfast serve, or another program): pass "
                               f"--port with a free one") from None
        raise
    say(f"covfast serve: open http://{host}:{port} in a browser (Ctrl-C stops it)")
    if not block:
        close = page.close

        def close_and_clean(*args, **kwargs):
            try:
                return close(*args, **kwargs)
            finally:
                page.covfast_cleanup()
        page.close = close_and_clean
        return page
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
        page.covfast_cleanup()
    return page
