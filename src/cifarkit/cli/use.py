"""The commands that use a trained model: predict, cam, export, serve, and demo (the whole workflow
on the bundled sample).

Each handler parses its arguments into one library call (keywords only) and prints the result.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from cifarkit.cli.options import (
    add_device_option,
    add_inference_options,
    add_logit_adjust_option,
    add_precision_option,
    add_tta_option,
    json_line,
    port_number,
    positive_int,
    serve_limit,
)
from cifarkit.errors import CifarkitError, DataError
from cifarkit.safecsv import csv_row
from cifarkit.safepath import check_replaceable, claim_outputs, inside, output_dir, safe_component, temp_beside


def _paths(inputs: list[str]) -> list[str]:
    """The inputs that name places (not `-` for stdin), for `safepath.check_apart`."""
    return [i for i in inputs if i != "-"]


def _own_file(out: Path, name: str, written: list[str]) -> Path:
    """`out/name` for a file this command writes (named after an input): refused in one line when a
    file of that name is there that cifarkit did not write; noted in `written` for the record."""
    out.mkdir(parents=True, exist_ok=True)  # made with the first file: a command that writes nothing leaves no folder
    path = inside(out, name)
    check_replaceable(out, [name])
    written.append(name)
    return path


def cmd_predict(a: argparse.Namespace) -> int:
    """`cifarkit predict`: predict files, folders and globs; exit 1 if any file was unreadable."""
    from cifarkit.infer.inference import describe
    from cifarkit.plotting import save
    from cifarkit.predict import expand_inputs, load, show_result

    # the output folder first (before the model loads): not among the inputs, only our own files replaced
    out = (output_dir(path=a.out, overwrite=a.overwrite, inputs=_paths(a.inputs), writes=["predictions.csv"])
           if a.out else None)
    clf = load(path=a.model, device=a.device, tta=a.tta, logit_adjust=a.logit_adjust, precision=a.precision)
    if a.batch_size:
        clf.batch_size = a.batch_size
    written: list[str] = []
    files, problems = expand_inputs(inputs=a.inputs)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    rows, failed = [], len(problems)
    if not a.json and files:
        print(f"# {clf.source}: {describe(clf.settings())}", file=sys.stderr)
        print(f"{'path':<48} {'label':<14} {'score':>6}  top-{min(a.topk, len(clf.classes))}")
    for path, pred, err in clf.predict_files(files, a.topk):
        if pred is None:
            failed += 1
            print(f"error: {err}", file=sys.stderr)
            continue
        rows.append(pred)
        if a.json:
            print(json_line(pred.as_dict()), flush=True)
        else:
            tops = ", ".join(f"{t['label']} {t['score']:.2f}" for t in pred.topk[1:])
            print(f"{str(path)[-48:]:<48} {pred.label:<14} {pred.score:6.3f}  {tops}")
        if out and len(rows) <= a.draw_limit:
            fig = show_result(img=path, result=pred)
            save(fig=fig, out=_own_file(out, f"{len(rows):05d}_{safe_component(Path(path).stem)}.png", written))
    if out:
        claim_outputs(out, [*written, "predictions.csv"], "predict")
        tmp = temp_beside(out / "predictions.csv")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "label_id", "score", "topk", "tta", "precision", "logit_adjust",
                        "temperature"])
            for r in rows:
                w.writerow(csv_row([r.path, r.label, r.label_id, f"{r.score:.6f}", json.dumps(r.topk), r.tta,
                                    r.precision, r.logit_adjust, r.temperature]))
        tmp.replace(out / "predictions.csv")
        print(f"wrote {out / 'predictions.csv'}", file=sys.stderr)
    if not files and not problems:
        print("error: no image files found in the inputs", file=sys.stderr)
        return 1
    if failed:
        print(f"error: {failed} input(s) could not be predicted (listed above)", file=sys.stderr)
        return 1
    return 0


def cmd_cam(a: argparse.Namespace) -> int:
    """`cifarkit cam`: Grad-CAM overlays of images, or `--list-layers`."""
    from cifarkit.cam import default_layer, spatial_layers
    from cifarkit.predict import expand_inputs, load

    clf = load(path=a.checkpoint, device=a.device, tta=a.tta, precision=a.precision)
    if clf.model is None:
        raise CifarkitError(f"{a.checkpoint}: Grad-CAM needs the PyTorch checkpoint (.pt) the model was "
                            "exported from; an exported .onnx file has no gradients to read")
    if a.list_layers:
        best = default_layer(model=clf.model, model_name=clf.config.model.name,
                             input_size=clf.prep.input_size)
        for name, shape in spatial_layers(model=clf.model, input_size=clf.prep.input_size):
            print(f"{name:<40} {str(shape):<20}{'  <- default' if name == best else ''}")
        return 0
    out = output_dir(path=a.out, overwrite=a.overwrite, inputs=_paths(a.inputs), create=False)
    files, problems = expand_inputs(inputs=a.inputs)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    failed = len(problems)
    written: list[str] = []
    try:
        return _cam_files(a, clf, files, out, written, failed, problems)
    finally:
        if written:
            claim_outputs(out, written, "cam")


def _cam_files(a: argparse.Namespace, clf, files: list, out: Path, written: list[str], failed: int,
               problems: list) -> int:
    """Grad-CAM of each of `files` into `out` (`cmd_cam`); the names written go into `written`."""
    import numpy as np

    from cifarkit.cam import compute_cam, save_cam_figure

    for i, f in enumerate(files):
        try:
            res = compute_cam(classifier=clf, image=f, target=a.target, method=a.method, layer=a.layer,
                              aug_smooth=a.aug_smooth, eigen_smooth=a.eigen_smooth)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        # an image in a folder named after a class (train/cat/x.png) has a known true label
        true = Path(f).parent.name if Path(f).parent.name in clf.classes else None
        stem = f"{i:04d}_{safe_component(Path(f).stem)}_cam"
        path = save_cam_figure(image=f, res=res, out=_own_file(out, f"{stem}.png", written), true=true)
        if a.save_npy:
            npy = _own_file(out, f"{stem}.npy", written)
            tmp = temp_beside(npy)
            np.save(tmp, res.heatmap)
            tmp.replace(npy)
        print(f"{f}: {res.target_label} {res.score:.3f} ({res.method} on {res.layer}) -> {path}")
    if not files and not problems:
        print("error: no image files found in the inputs", file=sys.stderr)
        return 1
    return 1 if failed else 0


def cmd_export(a: argparse.Namespace) -> int:
    """`cifarkit export`: ONNX or TorchScript with a parity check."""
    from cifarkit.export import export_model

    r = export_model(ckpt=a.checkpoint, fmt=a.format, out=a.out, dynamic_batch=a.dynamic_batch, data=a.data,
                     overwrite=a.overwrite, logit_adjust=a.logit_adjust)
    print(f"wrote {r.path} ({r.format}); parity on {r.images} {r.image_source}: max abs diff "
          f"{r.max_abs_diff:.2e}, top-1 agreement {r.top1_agreement * 100:.1f}%")
    if r.format == "torchscript":
        print("note: PyTorch deprecates TorchScript (torch.jit); the .ts file loads in today's LibTorch, but for "
              "new deployments prefer --format onnx")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    """`cifarkit serve`: the web app and JSON API (see `cifarkit.serve.app`)."""
    from cifarkit.extras import require

    require(module="fastapi", what="cifarkit serve")  # before importing the app, which needs it at import time
    require(module="uvicorn", what="cifarkit serve")
    from cifarkit.serve.app import Limits, serve

    serve(model=a.model, runs=a.runs, host=a.host, port=a.port, device=a.device, tta=a.tta,
          limits=Limits(max_upload_mb=a.max_upload_mb, max_files=a.max_files, max_batch=a.max_batch,
                        wait_ms=a.batch_wait_ms, max_queue=a.max_queue, max_decoded_mpx=a.max_decoded_mpx),
          precision=a.precision, allow_hosts=tuple(a.allow_host))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """`cifarkit demo`: the whole workflow on the bundled sample, written into --out."""
    from cifarkit.demo import DEMO_EPOCHS, run_demo

    run_demo(out=a.out, epochs=a.epochs or DEMO_EPOCHS, quick=a.quick)
    return 0


def add_predict(sub) -> None:
    """Add `predict` to the subparsers `sub`."""
    p = sub.add_parser("predict", help="predict images, folders or globs with a checkpoint or .onnx file")
    p.add_argument("model", help="checkpoint (.pt) or exported model (.onnx)")
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive), globs, or - for paths on stdin")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--batch-size", type=positive_int, default=None)
    add_tta_option(p)
    add_logit_adjust_option(p)
    add_precision_option(p)
    p.add_argument("--out", default=None, help="folder for predictions.csv and drawn results (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    p.add_argument("--draw-limit", type=int, default=200, help="draw at most this many results with --out")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    add_device_option(p)
    p.set_defaults(fn=cmd_predict)


def add_cam(sub) -> None:
    """Add `cam` to the subparsers `sub`."""
    from cifarkit.cam import METHODS

    c = sub.add_parser("cam", help="Grad-CAM heatmaps (original | overlay)")
    c.add_argument("checkpoint")
    c.add_argument("inputs", nargs="*")
    c.add_argument("--target", default=None, help="class name or id (default: the predicted class)")
    c.add_argument("--method", default="gradcam", choices=list(METHODS))
    c.add_argument("--layer", default=None, help="module name (default: the last spatial block)")
    c.add_argument("--list-layers", action="store_true")
    c.add_argument("--aug-smooth", action="store_true")
    c.add_argument("--eigen-smooth", action="store_true")
    c.add_argument("--save-npy", action="store_true", help="also save the raw heatmap as .npy")
    c.add_argument("--out", default="cam_out", help="output folder (new or empty)")
    c.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    add_inference_options(c)
    c.set_defaults(fn=cmd_cam)


def add_export(sub) -> None:
    """Add `export` to the subparsers `sub`."""
    e = sub.add_parser("export", help="export to ONNX or TorchScript, with a parity check")
    e.add_argument("checkpoint")
    e.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    e.add_argument("--out", default=None)
    e.add_argument("--dynamic-batch", action="store_true")
    e.add_argument("--data", default=None, help="images for the parity check (default: the run's data.root)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_logit_adjust_option(e)
    e.set_defaults(fn=cmd_export)


def add_serve(sub) -> None:
    """Add `serve` to the subparsers `sub`."""
    v = sub.add_parser("serve", help="local web page and JSON API for a model (and its runs)")
    v.add_argument("model", help="checkpoint (.pt) or exported model (.onnx)")
    v.add_argument("--runs", default=None, help="folder of run directories to show (only files under it are served)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    v.add_argument("--port", type=port_number, default=8000, help="port, 1..65535 (0: any free one)")
    v.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name this server may be reached by, besides localhost and IP addresses; requests "
                        "naming any other Host are refused (DNS rebinding); repeat for several")
    add_inference_options(v)
    v.add_argument("--max-upload-mb", type=serve_limit("max_upload_mb"), default=20.0,
                   help="largest request body [MiB, > 0]")
    v.add_argument("--max-files", type=serve_limit("max_files"), default=64, help="most image files in one request")
    v.add_argument("--max-batch", type=serve_limit("max_batch"), default=64,
                   help="most images in one batched forward pass")
    v.add_argument("--batch-wait-ms", type=serve_limit("wait_ms"), default=5.0,
                   help="how long to collect requests into a batch [ms, 0..10000]")
    v.add_argument("--max-queue", type=serve_limit("max_queue"), default=256,
                   help="waiting requests beyond which 503 is sent")
    v.add_argument("--max-decoded-mpx", type=serve_limit("max_decoded_mpx"), default=64.0,
                   help="decoded image pixels all requests together may hold at once, in units of 1024x1024 px "
                        "(the most one upload decodes to); requests beyond it wait their turn")
    v.set_defaults(fn=cmd_serve)


def add_demo(sub) -> None:
    """Add `demo` to the subparsers `sub`."""
    d = sub.add_parser("demo", help="the whole workflow on the sample shipped with cifarkit: data, the airbench94 "
                       "recipe (airnet) trained for 5 epochs on 2,000 images, eval, analyze, predict, Grad-CAM, "
                       "ONNX export")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--epochs", type=float, default=None, help="training epochs (default: the demo's own, 5)")
    d.add_argument("--quick", action="store_true", help="tiny training, for tests")
    d.set_defaults(fn=cmd_demo)
