"""Write the example notebooks from the cells below (without outputs), execute or render them.

The notebooks are what students read; this file is their source, so the two notebooks' shared
steps stay in step and the stored files never carry outputs.

    python examples/make_notebooks.py            # rewrite both .ipynb files after editing a cell
    python examples/make_notebooks.py --render   # also execute the tutorial and write
                                                 # docs/notebook/cifar10_tutorial.html

`execute` is what tests/test_docs.py runs each notebook with.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SHOW = '''\
def show(path, width=None):
    """Display a PNG written by cifarkit inline in the notebook."""
    display(Image(filename=str(path), width=width))
'''

TUTORIAL = [
    new_markdown_cell("""\
# CIFAR-10 with cifarkit: the tutorial's seven steps

This notebook walks the workflow of the OpenMMLab MMClassification CIFAR-10 tutorial through
cifarkit's Python API: **read** the batches, **look** at them, **export** them to image folders,
**train** a model from a config, **plot** its curves, **predict** an image and **explain** a
prediction with Grad-CAM.

It uses the small sample shipped inside the package (200 training and 50 test images per class),
so it runs in a couple of minutes on a laptop CPU with nothing to download. To use the full
dataset instead, run `cifarkit data fetch cifar10 --root data` and replace the
`write_cifar_batches` line below with `DATA = "data/cifar-10-python.tar.gz"`: every later step
stays the same.

Everything is written under `tutorial_out/` in the current folder."""),
    new_code_cell('''\
from pathlib import Path

from IPython.display import Image, display

import cifarkit
from cifarkit.demo import read_sample

WORK = Path("tutorial_out")
WORK.mkdir(exist_ok=True)
''' + "\n" + SHOW),
    new_markdown_cell("""\
## 1. Read and inspect the batches

CIFAR-10's "python version" is six pickled batches (`data_batch_1` ... `data_batch_5`,
`test_batch`) and a `batches.meta` file with the class names. We write the shipped sample in
exactly that layout, then read it back the way you would read the real download.

`read_cifar` never runs code from the file: the pickles are opened with an allow-list, and the
shapes, labels and class names are validated. It returns an `ImageSet`: uint8 images of shape
(N, 32, 32, 3), integer labels, the class names and where every image came from."""),
    new_code_cell('''\
from cifarkit.data.cifar import read_cifar, write_cifar_batches
from cifarkit.data.inspect import format_inspect, inspect_path

sample = read_sample()
DATA = write_cifar_batches(sample["train"], sample["test"], WORK / "data")

print(format_inspect(inspect_path(DATA)))
train = read_cifar(DATA, "train")
test = read_cifar(DATA, "test")
print(train.images.shape, train.images.dtype, "labels", train.labels[:10])
print(train.class_counts())'''),
    new_markdown_cell("""\
`to_dataframe` gives the tutorial's table: one row per image with its batch, index, future path,
label id and name, and the pixels. It needs pandas (`pip install 'cifarkit[pandas]'`)."""),
    new_code_cell('''\
from cifarkit.data.cifar import to_dataframe

df = to_dataframe(train)
df.head()'''),
    new_markdown_cell("""\
## 2. Look at the images

Always look at the data before training. `show_grid` draws the first images in file order, or a
fixed number per class (one row each). The 32 px images are upscaled without smoothing, so what
you see is what the network sees."""),
    new_code_cell('''\
from cifarkit.data.show import show_grid

show(show_grid(train, WORK / "first20.png", first=20))
show(show_grid(train, WORK / "per_class.png", per_class=8))'''),
    new_markdown_cell("""\
## 3. Export to image folders, with a manifest

Many tools want `train/<class>/<file>.png` folders. `export_dataset` writes them (PNG is
lossless), plus `manifest.csv` with one row per image: where it came from (`source`, `index`),
where it went (`path`) and its label. The export is written to a temporary folder and renamed,
so an interrupted export never looks complete; `overwrite=True` replaces an earlier one."""),
    new_code_cell('''\
import pandas as pd

from cifarkit.data.export import export_dataset

res = export_dataset({"train": train, "test": test}, WORK / "export", overwrite=True)
print(res.counts)
manifest = pd.read_csv(res.manifest)
manifest.head()'''),
    new_code_cell('''\
manifest.groupby(["split", "label_name"]).size().unstack("split").T'''),
    new_markdown_cell("""\
## 4. Train from a config

A run is a YAML config (a shipped recipe by name, or your own file) plus overrides in
`key.sub=value` form: the same strings `cifarkit train --set` takes. `cifarkit train
--list-keys` prints every key with its meaning.

We take the `fast` recipe (airnet with the Muon optimiser) and shrink it for the 2,000-image
sample: batch 256 (8 steps per epoch), a few epochs, an evaluation after every epoch. `fit`
writes the run directory: `config.yaml`, `log.jsonl`, `last.pt` and `best.pt`. `force=True`
lets the notebook run again: the earlier run is moved aside, never silently overwritten."""),
    new_code_cell('''\
cfg = cifarkit.load_config("fast", [
    f"data.root={DATA}", "name=tutorial",
    "train.epochs=6", "train.batch_size=256", "optim.weight_decay=0.0005",
    "eval.interval=1", "eval.tta=none", "log.interval=2", "checkpoint.interval=100",
    "log.plots=false",
])
RUN = WORK / "run"
summary = cifarkit.fit(cfg, work_dir=RUN, force=True)
sorted(p.name for p in RUN.iterdir() if not p.name.startswith("."))'''),
    new_markdown_cell("""\
## 5. Plot the loss and top-1 / top-5 from the log

`cifarkit.logs.read` turns a log into a pandas table. It reads cifarkit's `log.jsonl` as well as
MMClassification's `*.log.json` and MMEngine's `scalars.json`, so you can compare your old
tutorial runs with new ones. `plot_runs` draws the training loss per iteration and the
validation accuracy per epoch for one or several runs."""),
    new_code_cell('''\
from cifarkit.analysis.curves import plot_runs

log = cifarkit.logs.read(RUN)
print(log[log["mode"] == "val"][["epoch", "top1", "top5", "loss"]].to_string(index=False))
show(plot_runs([RUN], WORK / "curves.png"))'''),
    new_markdown_cell("""\
## 6. Predict one image

`cifarkit.load` opens a checkpoint (or an exported `.onnx` file) with everything it needs: the
model, the class names and the preprocessing of its run. `predict` takes a path, a PIL image or
an array and returns the label, its probability and the top-5; it gives exactly the label
`cifarkit eval` gives the same image. `show_result` draws the image beside its top-5."""),
    new_code_cell('''\
from cifarkit.plotting import save

clf = cifarkit.load(RUN / "best.pt")
image = sorted((WORK / "export" / "test" / "cat").glob("*.png"))[0]
pred = clf.predict(image)
print(pred.label, round(pred.score, 3), [t["label"] for t in pred.topk])
save(cifarkit.show_result(image, pred), WORK / "prediction.png")
show(WORK / "prediction.png")'''),
    new_markdown_cell("""\
## 7. Grad-CAM for a chosen class

Grad-CAM shows which part of the image raised the score of a class. With `target` you choose the
class to explain, not only the predicted one: asking "where does the model see a *dog*?" on a
cat picture is a good way to find what it confuses. It needs the `grad-cam` package
(`pip install 'cifarkit[cam]'`)."""),
    new_code_cell('''\
from cifarkit.cam import compute_cam, save_cam_figure

for target in ("cat", "dog"):
    cam = compute_cam(clf, image, target=target)
    print(f"{target}: score {cam.score:.2f}, layer {cam.layer}")
    show(save_cam_figure(image, cam, WORK / f"cam_{target}.png"))'''),
    new_markdown_cell("""\
## Next steps

- Train on the full dataset: `cifarkit data fetch cifar10 --root data`, then
  `cifarkit train fast --set data.root=data`.
- `cifarkit analyze RUN/best.pt --out analysis/` adds the confusion matrix, per-class metrics and
  calibration; `cifarkit report RUN` writes all of it into one HTML file.
- `examples/own_folder.ipynb` runs the same steps on your own image folder."""),
]

OWN = [
    new_markdown_cell("""\
# Your own images with cifarkit

The same steps as `cifar10_tutorial.ipynb`, on a folder of your own images laid out as

```
FOLDER/train/<class>/<any name>.<jpg|png|...>
FOLDER/test/<class>/<any name>.<jpg|png|...>
```

Any Pillow format works; images of any size are resized to `SIZE` pixels. Set `FOLDER` below
(or the environment variable `CIFARKIT_FOLDER`). Left empty, the notebook builds a stand-in
folder from the shipped sample, so it runs anywhere."""),
    new_code_cell('''\
import os
from pathlib import Path

from IPython.display import Image, display

import cifarkit

FOLDER = os.environ.get("CIFARKIT_FOLDER", "")  # your folder here
SIZE = 32  # pixels the images are resized to
WORK = Path("own_folder_out")
WORK.mkdir(exist_ok=True)
''' + "\n" + SHOW),
    new_code_cell('''\
if not FOLDER:  # a stand-in: the shipped sample, written as JPEG folders
    from cifarkit.data.export import export_dataset
    from cifarkit.demo import read_sample

    sample = read_sample()
    FOLDER = export_dataset(sample, WORK / "images", fmt="jpg", overwrite=True).out
FOLDER = Path(FOLDER)
print(FOLDER)'''),
    new_markdown_cell("""\
## 1. Check and read the folder

`check_files` opens every file once and reports the ones that are not readable images, before
they can stop a training run. `load_dataset` decodes the folder once into an `ImageSet` (uint8
images of shape (N, SIZE, SIZE, 3)) and caches it, so the next run starts at once."""),
    new_code_cell('''\
from cifarkit.data.folder import check_files
from cifarkit.data.sources import list_files, load_dataset

report = check_files(list_files(FOLDER, "train"))
print(f"{report.images} images, sizes {report.sizes}, unreadable {report.unreadable or 'none'}")
train = load_dataset(FOLDER, "train", image_size=SIZE)
test = load_dataset(FOLDER, "test", image_size=SIZE)
print(train.images.shape, train.classes)
cifarkit.to_dataframe(train).head()'''),
    new_markdown_cell("## 2. Look at it"),
    new_code_cell('''\
from cifarkit.data.show import show_grid

show(show_grid(train, WORK / "per_class.png", per_class=8))'''),
    new_markdown_cell("""\
## 3. Train

The `fast` recipe again, pointed at your folder. Its `data.mean` and `data.std` are CIFAR-10's;
`cifarkit data stats FOLDER` prints your folder's, to set with two more overrides.
`data.image_size` decodes every image to `SIZE` pixels."""),
    new_code_cell('''\
cfg = cifarkit.load_config("fast", [
    f"data.root={FOLDER}", f"data.image_size={SIZE}", f"model.num_classes={len(train.classes)}",
    "name=own_folder", "train.epochs=6", "train.batch_size=256", "optim.weight_decay=0.0005",
    "eval.interval=1", "eval.tta=none", "log.interval=2", "checkpoint.interval=100", "log.plots=false",
])
RUN = WORK / "run"
summary = cifarkit.fit(cfg, work_dir=RUN, force=True)'''),
    new_markdown_cell("## 4. Curves"),
    new_code_cell('''\
from cifarkit.analysis.curves import plot_runs

show(plot_runs([RUN], WORK / "curves.png"))'''),
    new_markdown_cell("## 5. Predict one of your images, and explain it"),
    new_code_cell('''\
from cifarkit.cam import compute_cam, save_cam_figure
from cifarkit.plotting import save

clf = cifarkit.load(RUN / "best.pt")
image = sorted((FOLDER / "test").rglob("*.*"))[0]
pred = clf.predict(image)
save(cifarkit.show_result(image, pred), WORK / "prediction.png")
show(WORK / "prediction.png")
cam = compute_cam(clf, image, target=pred.label)
show(save_cam_figure(image, cam, WORK / "cam.png"))'''),
]


NOTEBOOKS = {"cifar10_tutorial.ipynb": TUTORIAL, "own_folder.ipynb": OWN}


def build(name: str) -> nbformat.NotebookNode:
    """Notebook `name` (a key of NOTEBOOKS) without outputs, with a Python 3 kernel."""
    nb = new_notebook(cells=NOTEBOOKS[name], metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    })
    for i, cell in enumerate(nb.cells):
        cell.id = f"{Path(name).stem.replace('_', '-')}-{i}"
    return nb


def execute(path: Path, cwd: Path, timeout: int = 900, replace: dict[str, str] | None = None
            ) -> tuple[nbformat.NotebookNode, float]:
    """Run the notebook at `path` top to bottom in the folder `cwd`.

    Args:
        path: the .ipynb file.
        cwd: the working folder of the kernel (the notebook writes its outputs there).
        timeout: the longest one cell may run [s].
        replace: text replacements in the code cells before running (the test suite trains
            1 epoch instead of the tutorial's 6, so its time does not depend on the CPU kind).

    Returns:
        The executed notebook (outputs filled in) and the wall time it took [s].

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised; the message shows the traceback.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for old, new in (replace or {}).items():
            if cell.cell_type == "code":
                cell.source = cell.source.replace(old, new)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb, time.perf_counter() - t0


def render_html(nb: nbformat.NotebookNode, out: Path) -> Path:
    """Write an executed notebook as one HTML page (figures inlined, no scripts from the network)."""
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nb)
    html = re.sub(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>', "", html)  # require.js, MathJax
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


if __name__ == "__main__":
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print(HERE / name)
    if "--render" in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            nb, seconds = execute(HERE / "cifar10_tutorial.ipynb", Path(tmp))
        page = render_html(nb, HERE.parent / "docs" / "notebook" / "cifar10_tutorial.html")
        print(f"executed in {seconds:.0f} s; wrote {page}")
