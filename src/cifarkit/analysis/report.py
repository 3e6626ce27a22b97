"""`cifarkit report`: one self-contained HTML file per run (images inlined, no network needed).

Sections: summary, config, curves, confusion matrix, per-class table, calibration, a gallery of
the highest-loss errors each beside its Grad-CAM overlay, robustness to corruptions (when
`cifarkit robustness` wrote RUN/robustness/), and dataset statistics. The page is
plain HTML + CSS that reflows to a phone's width. A small inline script records how many of the
embedded images decoded (`data-images-loaded` on <body>), which the browser test reads.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
from pathlib import Path

import numpy as np

from cifarkit.errors import CifarkitError
from cifarkit.logs import read_records
from cifarkit.safepath import check_apart, output_file, real_path, write_text_atomic

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:0 12px 40px;color:#222;
     background:#fafafa;line-height:1.4}
main{max-width:1100px;margin:auto}
h1{font-size:1.5em;margin:18px 0 4px} h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto;display:block}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:8px}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:8px}
.card b{display:block;font-size:1.35em}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:.9em;background:#fff}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right} th:first-child,td:first-child{text-align:left}
pre{background:#fff;border:1px solid #e3e3e3;padding:8px;overflow-x:auto;font-size:.8em;max-height:420px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:8px}
.gallery figure{margin:0;background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:4px}
.gallery img{image-rendering:pixelated;width:50%;flex:1 1 0;min-width:0} figcaption{font-size:.78em}
.note{color:#777;font-size:.9em}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""


def img_tag(png: bytes, alt: str) -> str:
    """An `<img>` tag with the PNG bytes inline (a data: URL), so a page is one self-contained file."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _file_img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="note">{html.escape(alt)}: not available</p>'
    return img_tag(path.read_bytes(), alt)


def png_bytes(arr: np.ndarray, scale: int = 4) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes; a small one (<= 64 px) enlarged `scale` times,
    nearest-neighbour, so its pixels stay visible on a page."""
    from PIL import Image

    im = Image.fromarray(arr)
    if max(im.size) <= 64:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _table(rows: list[dict], cols: list[str], fmt: dict[str, str] | None = None) -> str:
    fmt = fmt or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            text = format(v, fmt[c]) if c in fmt and isinstance(v, (int, float)) else str(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _gallery(adir: Path, ckpt: Path, metrics: dict, data: str | None, n: int = 12, precision: str | None = None
             ) -> str:
    """The worst errors beside their Grad-CAM; reuses analyze's predictions.npz (no second pass)."""
    import torch

    from cifarkit.analysis.metrics import softmax
    from cifarkit.data.splits import load_eval_split
    from cifarkit.infer.checkpoint import load_checkpoint
    from cifarkit.infer.evaluate import ranked
    from cifarkit.infer.restore import config_of

    idx = metrics.get("misclassified_index", [])[:n]
    if not idx:
        return '<p class="note">no misclassified images</p>'
    pred = np.load(adir / "predictions.npz")
    ck = load_checkpoint(ckpt)
    images, _, _ = load_eval_split(config_of(ck, ckpt), ck["classes"], data)
    p = {"images": images, "labels": pred["labels"]}
    classes = [str(c) for c in pred["classes"]]
    probs = softmax(pred["logits"].astype(np.float64))
    predicted = ranked(torch.from_numpy(pred["logits"]), 1)[:, 0].tolist()  # eval's tie-break
    from cifarkit.cam import compute_cam, overlay
    from cifarkit.extras import MissingExtra
    from cifarkit.predict import Classifier

    note = ""
    try:
        clf = Classifier.from_checkpoint(ckpt, device="cpu", precision=precision)
    except CifarkitError as e:
        clf, note = None, f'<p class="note">No Grad-CAM overlays: {html.escape(str(e))}</p>'
    figs = []
    for i in idx:
        img = p["images"][i].permute(1, 2, 0).numpy()
        y, pred = int(p["labels"][i]), predicted[i]
        parts = [img_tag(png_bytes(img), "image")]
        if clf is not None:
            try:
                res = compute_cam(clf, img)
                parts.append(img_tag(png_bytes(overlay(img, res.heatmap)), "Grad-CAM"))
            except MissingExtra as e:  # say once which extra draws them, then stop trying
                clf, note = None, f'<p class="note">No Grad-CAM overlays: {html.escape(str(e))}</p>'
            except CifarkitError:
                pass
        # as fastai's top losses: what it said, how sure, and how much it gave the true class
        cap = (f"predicted <b>{html.escape(classes[pred])}</b> ({probs[i, pred]:.2f}), "
               f"true <b>{html.escape(classes[y])}</b> ({probs[i, y]:.2f})")
        figs.append(f'<figure><div style="display:flex;gap:2px">{"".join(parts)}</div><figcaption>{cap}'
                    "</figcaption></figure>")
    return note + f'<div class="gallery">{"".join(figs)}</div>'


def write_report(run_dir: str | Path, out: str | Path | None = None, data: str | None = None,
                 analysis: bool = True, precision: str | None = None, overwrite: bool | None = None) -> Path:
    """Write one self-contained HTML report of a run (images inlined, readable offline).

    Holds the summary, the config, the curves, and with `analysis` the confusion matrix, per-class
    table, calibration, the worst errors with Grad-CAM overlays and the dataset statistics.

    Args:
        run_dir: a run directory written by `fit` (with `log.jsonl`).
        out: the HTML file to write (default `run_dir/report.html`).
        data: a dataset path to analyse on (default: the run's own).
        analysis: False leaves out everything that needs predictions (curves and config only).
        precision: of the analysis: auto (default: what this machine is fast at) | fp32 | bf16 | fp16.
        overwrite: replace an existing regular file `out`; None (default): only the run's own
            `report.html` is refreshed, any other existing file is refused.

    Returns:
        The path of the HTML file.

    Raises:
        CifarkitError: `run_dir` holds no `log.jsonl`, or its checkpoint or data cannot be read.
    """
    from cifarkit.analysis.curves import plot_records

    run_dir = Path(run_dir)
    if not (run_dir / "log.jsonl").is_file():
        raise CifarkitError(f"{run_dir}: no log.jsonl here; point at a cifarkit run directory")
    own = run_dir / "report.html"
    out = Path(out) if out else own
    if out.suffix.lower() not in (".html", ".htm"):
        raise CifarkitError(f"--out {out}: a report is an HTML file; give a name ending in .html")
    if overwrite is None:
        overwrite = real_path(out) == real_path(own)  # the run's own report is a view, refreshed each time
    output_file(out, overwrite)  # never a device, FIFO or link; another existing file only with --overwrite
    recs = read_records(run_dir)
    header = recs.header
    cfg = header.get("config", {})
    check_apart(out, [data or (cfg.get("data") or {}).get("root")])  # never written among the images
    val = recs.val
    last = val[-1] if val else {}
    best = max(val, key=lambda v: v["top1"] or -1) if val else {}
    summary = recs.summary

    def num(d: dict, key: str, fmt: str) -> str:  # the log reader leaves numbers or None
        v = d.get(key)
        return "?" if v is None else format(v, fmt)

    model, data_cfg = cfg.get("model"), cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    name = str(cfg.get("name", run_dir.name))
    split = str(last.get("split") or header.get("eval_split") or "test")  # the split every val record was on
    cards = [("model", str(model.get("name", "?")) if isinstance(model, dict) else "?"),
             ("parameters", f"{(header.get('params') or 0) / 1e6:.2f}M"),
             (f"final {split} top-1 (last.pt)", f"{num(last, 'top1', '.2f')}% (epoch {last.get('epoch', '?')})"),
             (f"final {split} top-5 (last.pt)", f"{num(last, 'top5', '.2f')}%"),
             (f"best {split} top-1 (best.pt)", f"{num(best, 'top1', '.2f')}% (epoch {best.get('epoch', '?')})"),
             ("epochs", str(last.get("epoch", "?"))),
             ("time", f"{num(summary, 'seconds', '.0f')} s"), ("device", str(header.get("device", "?")))]
    parts = [f"<h1>{html.escape(name)}</h1>",
             f'<p class="note">{html.escape(str(run_dir))} — data {html.escape(str(data_cfg.get("root")))}'
             f" ({header.get('num_train', '?')} train / {header.get('num_eval', '?')} {header.get('eval_split', '')}),"
             f" classes: {html.escape(', '.join(map(str, header.get('classes', []))))}</p>",
             '<div class="cards">' + "".join(f'<div class="card">{html.escape(k)}<b>{html.escape(v)}</b></div>'
                                             for k, v in cards) + "</div>"]
    curves = run_dir / "curves.png"
    if not curves.is_file():
        with contextlib.suppress(CifarkitError):
            plot_records([recs], curves)
    parts += ["<h2>Curves</h2>", _file_img(curves, "training curves")]
    if (run_dir / "train_batch.png").is_file():  # written at the start by `cifarkit train` (log.plots)
        parts += ["<h2>One training batch, as the model sees it</h2>",
                  _file_img(run_dir / "train_batch.png", "one augmented training batch")]

    ckpt = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    if analysis and ckpt.is_file():
        from cifarkit.analysis.analyze import analyze

        adir = run_dir / "analysis"
        try:
            m = analyze(ckpt, adir, data=data, precision=precision)
        except CifarkitError as e:
            parts.append(f'<h2>Analysis</h2><p class="note">not available: {html.escape(str(e))}</p>')
        else:
            parts += [f"<h2>Confusion matrix ({html.escape(m['split'])}, {m['n']} images, {ckpt.name})</h2>",
                      f"<p>top-1 <b>{m['top1']:.2f}%</b>, top-5 <b>{m['top5']:.2f}%</b>, loss {m['loss']:.4f}</p>",
                      _file_img(adir / "confusion_matrix.png", "confusion matrix"),
                      "<h2>Per-class metrics</h2>",
                      _table(m["per_class"], ["class", "precision", "recall", "f1", "accuracy", "support"],
                             {"precision": ".3f", "recall": ".3f", "f1": ".3f", "accuracy": ".3f"}),
                      "<h2>Most confused pairs</h2>",
                      _table(m["most_confused"], ["true", "predicted", "count", "fraction_of_true"],
                             {"fraction_of_true": ".2%"}),
                      f"<h2>Calibration (ECE {m['ece'] * 100:.2f}%)</h2>",
                      _file_img(adir / "reliability.png", "reliability diagram"),
                      "<h2>Highest-loss errors, with Grad-CAM</h2>", _gallery(adir, ckpt, m, data, precision=precision)]
    parts += _robustness_section(run_dir)
    try:
        from cifarkit.data.stats import dataset_stats

        s = dataset_stats(data or data_cfg.get("root"), run_dir / "data_stats")
        dup = s["duplicates"]
        parts += ["<h2>Dataset</h2>", _file_img(run_dir / "data_stats" / "class_balance.png", "class balance"),
                  f"<p>mean {s['mean']}, std {s['std']} (0..255, {s['mean_std_split']}); sizes "
                  f"{html.escape(str(s['sizes']))}; exact duplicates within splits "
                  f"{html.escape(str(dup['within_split'] or 'none'))}, across splits "
                  f"{html.escape(str(dup['across_splits'] or 'none'))}; unreadable files {len(s['unreadable'])}</p>"]
    except (CifarkitError, TypeError) as e:
        parts.append(f'<h2>Dataset</h2><p class="note">not available: {html.escape(str(e))}</p>')
    parts += ["<h2>Config</h2>", f"<pre>{html.escape(_yaml(cfg))}</pre>",
              "<h2>Versions</h2>", f"<pre>{html.escape(json.dumps(header.get('versions', {}), indent=1))}</pre>"]
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(name)} — cifarkit report</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head><body><main>{''.join(parts)}</main></body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, page)
    return out


def _robustness_section(run_dir: Path) -> list[str]:
    """The run's `cifarkit robustness` result (RUN/robustness/, its default --out), when there is one:
    the summary line, the heat map and the sample grid. Files are read only from inside the run."""
    rdir = run_dir / "robustness"
    path = rdir / "robustness.json"
    if not path.is_file() or path.is_symlink() or run_dir.resolve() not in path.resolve().parents:
        return []
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
        line = (f"<p>{html.escape(str(r['checkpoint']))}, {html.escape(str(r['split']))} ({int(r['n'])} images, "
                f"{len(r['corruptions'])} corruptions x {len(r['severities'])} severities, tta "
                f"{html.escape(str(r['tta']))}, {html.escape(str(r['source']))}): clean top-1 "
                f"<b>{float(r['clean_top1']):.2f}%</b>, mean corruption accuracy <b>{float(r['mca']):.2f}%</b>")
        b = r.get("baseline") or {}
        if b.get("mce") is not None:
            line += (f", mCE <b>{float(b['mce']):.1f}</b> (relative {float(b['relative_mce'] or 0):.1f}) against "
                     f"{html.escape(str(b['checkpoint']))}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return [f'<h2>Robustness</h2><p class="note">{html.escape(str(path))} is unreadable: '
                f"{html.escape(type(e).__name__)}</p>"]
    parts = ["<h2>Robustness to corruptions (CIFAR-10-C protocol)</h2>", line + "</p>"]
    for f, alt in (("robustness.png", "top-1 per corruption and severity"),
                   ("robustness_samples.png", "one test image under every corruption")):
        if (rdir / f).is_file() and not (rdir / f).is_symlink():
            parts.append(_file_img(rdir / f, alt))
    return parts


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False, allow_unicode=True)
