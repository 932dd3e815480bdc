"""Interpretation report: one self-contained HTML page per run, with its figures."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .cases import infer_cases, report_case, report_picks
from .config import Config
from .dataset import canonical_root
from .decision import EMPTY, FLAGGED, OUTLINED
from .evaluate import band_confusion, confusion_table, evaluated, reference_table
from .figures import case_figure, plot_history, roc_figure, severity_figure
from .inference import load_run
from .outputs import figure_labels
from .pages import html_page, html_table, metrics_link, plain_value, synthetic_banner
from .runs import read_history, run_subdir
from .synth import is_synthetic

__all__ = ["report"]


def report(run: str | Path, split: str = "Test", config: Config | None = None, device: str | None = None,
           progress=None, data: str | Path | None = None, allow_calibration_split: bool = False) -> Path:
    "Write <run>/report/index.html with its PNGs; evaluates the split (of `data`, default the run's own) first unless its results are current."
    config = config or Config()
    learn, loaded = load_run(run, config.runs_dir, device, precision=config.precision)  # once: scoring and cases share it
    run_dir, cfg = loaded.dir, loaded.record
    per_image, summary, folder = evaluated(run_dir, split, data, config=config, device=device, progress=progress,
                                           allow_calibration_split=allow_calibration_split, learner=(learn, loaded))
    split = folder.name
    out = run_subdir(run_dir, "report")
    sections = []
    spec, decision = loaded.spec, loaded.decision
    settings = {"arch": spec.arch, "img_size": spec.img_size, "bs": spec.bs, "epochs": spec.epochs, "lr": spec.lr,
                "lr_used": cfg.get("lr_used"), "classes": spec.classes, "seed": spec.seed, "pretrained": cfg.get("pretrained"),
                "pretrained_reason": cfg.get("pretrained_reason"), "cls_weight": spec.cls_weight,
                "lung_weight": spec.lung_weight, "dice_weight": spec.dice_weight, "augment": spec.augment,
                "threshold": decision.threshold,
                **({"gate_topk": spec.gate_topk, "gate_margin": decision.gate_margin} if spec.gate_topk else {}),
                **({"infection kept": "inside the predicted lungs" if decision.inside_lungs else "anywhere"}
                   if spec.lung_weight else {}),
                "device": cfg.get("device"), "precision": cfg.get("precision"), "data_root": spec.data_root,
                "status": cfg.get("status")}
    sections.append(("Settings", html_table(pd.DataFrame({"setting": list(settings),
                                                          "value": [plain_value(v) for v in settings.values()]}))))
    history = read_history(run_dir)
    if len(history):
        plot_history(history, out / "history.png")
        shown = history.dropna(axis=1, how="all")  # figures a run does not have (no image head, no lungs) stay out
        sections.append(("Training curves", "<img src='history.png' alt='training curves'>" + html_table(shown)))
    if (run_dir / "lr_find.png").is_file():
        (out / "lr_find.png").write_bytes((run_dir / "lr_find.png").read_bytes())
        sections.append(("Learning-rate finder", "<img src='lr_find.png' alt='lr_find plot'>"))
    cols = ["group", "n", "dice", "dice_ci_low", "dice_ci_high", "iou", "dice_pooled", "iou_pooled",
            "sensitivity", "specificity", *(["flagged"] if "flagged" in summary and summary.flagged.notna().any() else [])]
    synthetic = is_synthetic(spec.data_root)
    reference = ("<h3>Against the reference study</h3><p>Not comparable: synthetic data.</p>" if synthetic else
                 "<h3>Against the reference study</h3>" + html_table(reference_table(summary)))
    empty_classes = [g for g in summary.group if g not in ("COVID-19", "All")]
    pooled = (f"<p class='note'>Pooled Dice adds up pixels over all a row's images. {' and '.join(empty_classes)} images "
              f"have no infection pixels at all, so their pooled Dice is 0 as soon as any one of them is outlined, "
              f"however many are left empty; their per-image Dice is the share left empty.</p>" if empty_classes else "")
    scored = canonical_root(data or spec.data_root)
    where = (f"<p class='note'>Scored on the {html.escape(split)} images of {html.escape(scored)}"
             + ("" if scored == canonical_root(spec.data_root) else
                f", not the data the run was trained on ({html.escape(spec.data_root)})") + ".</p>")
    cols += [c for c in figure_labels() if c in summary]  # the means of what the model's other outputs declare
    sections.append((f"Evaluation on {split}", where + html_table(summary[cols]) + pooled + reference))
    if "p_covid" in per_image and per_image.p_covid.notna().all():
        threshold = decision.threshold
        roc_figure(per_image, threshold, out / "roc.png")
        aucs = summary[summary.auc.notna()][["group", "n", "auc", "auc_ci_low", "auc_ci_high"]]
        sections.append(("Image level: which X-rays have COVID-19 infection",
                         f"<p>The image head keeps an X-ray when its probability is above {threshold:.4g}"
                         f"{' (calibrated on ' + html.escape(decision.split) + ')' if decision.split else ' (not calibrated)'}; "
                         f"at or below it, the mask is empty: <em>{EMPTY}</em>. A kept X-ray is <em>{OUTLINED}</em> "
                         f"when the segmentation outlines any pixel of it, and <em>{FLAGGED}</em> when it outlines none. "
                         "The dots on the curves are the threshold: the share of each class the head keeps. "
                         "AUC: telling COVID-19 from the group's images.</p>"
                         "<img src='roc.png' alt='ROC curves'>" + html_table(aucs)
                         + "<h3>Decision per class</h3>" + html_table(confusion_table(per_image), index=True)))
    for i, (title, rows) in enumerate(report_picks(per_image)):
        name = f"cases_{i}.png"
        case_figure([report_case(e) for e in infer_cases(learn, rows)], out / name, title)
        sections.append((title, f"<img src='{name}' alt='{html.escape(title)}'>"))
    lungs = "lung_dice" in summary and summary.lung_dice.notna().any()
    sev_cols = ["group", "n", "severity_mae", "severity_band_agreement", "severity_correlation"]
    if lungs:  # the model's own lungs: how well it outlines them, and severity measured with them
        sev_cols = ["group", "n", "lung_dice", "lung_dice_ci_low", "lung_dice_ci_high", "lung_iou", *sev_cols[2:],
                    "severity_mae_pred_lung", "severity_band_agreement_pred_lung", "severity_correlation_pred_lung",
                    "no_pred_lung"]
        severity_figure(per_image, out / "severity.png", "pred_pct_pred_lung", "the model's own lungs")
        bands = band_confusion(per_image.assign(pred_pct_lung=per_image.pred_pct_pred_lung))
        note = ("<p>Infection % of lung as a new X-ray gets it: the predicted infection inside the model's own "
                "predicted lungs, against the truth's share of the dataset's lung mask.</p>")
    else:
        severity_figure(per_image, out / "severity.png")
        bands = band_confusion(per_image)
        note = ("<p>This run has no lung output (it was trained before covfast outlined the lungs): infection % of "
                "lung is measured with the dataset's lung masks.</p>")
    sections.append(("Lungs and severity: infection % of lung", note + html_table(summary[sev_cols])
                     + "<img src='severity.png' alt='severity scatter'><h3>Severity bands, true against predicted</h3>"
                     + html_table(bands, index=True, other="images whose predicted infection % of lung is in this band")))
    (out / "index.html").write_text(html_page(f"covfast report: {run_dir.name} ({split})", sections,
                                              synthetic_banner(synthetic), metrics_link(out)))
    return out / "index.html"
