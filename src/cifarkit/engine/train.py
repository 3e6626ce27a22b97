"""`fit`: train a model from a `Config`, torchvision-references style.

    fit -> build -> (restore) -> loop of (train epoch, evaluate, save) -> summary -> after_run

Each stage is a function of its own (`build`, `restore`, `run_epoch`, `evaluate_epoch`,
`save_checkpoints`, `summarize`); the step itself is in step.py. Everything a run produces
lands in its run directory (`config.yaml`, `log.jsonl`, `last.pt`, `best.pt`, `epoch_N.pt`, and
`tb/`, `metrics.csv` when asked). An epoch's data order and augmentation are a pure function of
(seed, epoch, batch), so a resumed run replays the exact batches an uninterrupted one would.
Curves, the HTML report and the calibration figure are not the engine's job: the CLI passes writers
in `after_run` (`analysis.after_run.plot_writers`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from cifarkit.config import Config, config_to_dict, save_config
from cifarkit.data.imageset import ImageSet
from cifarkit.data.loader import normalize
from cifarkit.data.splits import RunData, build_data
from cifarkit.engine.dist import DistInfo, barrier, broadcast_flag, cleanup, init_from_env
from cifarkit.engine.early_stop import EarlyStop
from cifarkit.engine.loggers import make_sinks, summary_writer_class
from cifarkit.engine.losses import adjustment, class_weights
from cifarkit.engine.memory import hold_freed_memory
from cifarkit.engine.optimizers import build_optimizer, lr_lambdas
from cifarkit.engine.rundir import check_work_dir, claim_fresh, locked
from cifarkit.engine.runlog import RunLog
from cifarkit.engine.step import Trainer, TrainState, ema_update, train_one_epoch
from cifarkit.engine.tracking import finish_mlflow, require_mlflow
from cifarkit.errors import CheckpointError, CifarkitError, ConfigError
from cifarkit.infer.calibration import calibrate
from cifarkit.infer.checkpoint import atomic_save, check_resume_compatible, load_checkpoint, newest_valid_checkpoint
from cifarkit.infer.device import amp_dtype, cpu_kind, precision_name, resolve_device, versions, warn_slow_precision
from cifarkit.infer.evaluate import evaluate
from cifarkit.infer.prior import log_prior, posthoc_bias
from cifarkit.models import count_params, create_model, train_hooks
from cifarkit.safepath import safe_component
from cifarkit.saferead import Within

AfterRun = Callable[[Path], None]  # called with the run directory once training has finished
BeforeRun = Callable[[Path, RunData], None]  # called with the run directory and its data before the first step
OnEval = Callable[[dict[str, Any]], "str | None"]  # a val record -> a reason to stop the run, or None


class RunFinished(CifarkitError):
    """--resume found a run that has already trained every step its config asks for."""


def micro_batches(batch: int, micro_batch: int) -> int:
    """How many chunks `train.micro_batch` cuts one (per-process) batch into."""
    return math.ceil(batch / micro_batch) if 0 < micro_batch < batch else 1


def rescale_bn_momentum(model: torch.nn.Module, chunks: int) -> None:
    """With k micro-batches per step BatchNorm updates its running statistics k times per step:
    momentum m becomes 1 - (1 - m)^(1/k), so they forget at the same rate per step as with the
    whole batch (the batch statistics themselves are per chunk: ghost batch norm)."""
    if chunks <= 1:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is not None:
            m.momentum = 1 - (1 - m.momentum) ** (1 / chunks)


# ---- fit ----------------------------------------------------------------------------------------
def fit(cfg: Config, work_dir: str | Path | None = None, resume: str | bool | None = None,
        device: str | None = None, quiet: bool = False, force: bool = False,
        after_run: Sequence[AfterRun] = (), before_run: Sequence[BeforeRun] = (),
        sets: tuple[ImageSet, ImageSet] | None = None, on_eval: OnEval | None = None) -> dict[str, Any]:
    """Train `cfg`; returns a summary (best/final top-1, time, run directory).

    `on_eval` sees each evaluation's val record (epoch, iter, top1, loss, ...) once its checkpoint
    is saved; a non-empty string back stops the run there (a search's pruner): the log gets a
    `{"type": "stopped", "reason": ...}` record and the summary `stopped: reason`.

    `sets` = (train, val) in memory trains and evaluates on those instead of `data.root`'s splits
    (the data audit's cross-validation folds); not with torchrun or `resume`.

    `before_run` hooks see a fresh run's directory and data before its first step (e.g. the CLI's
    picture of one augmented batch), `after_run` hooks the finished run's directory.

    The run directory is locked while training (a second run on it fails at once). A fresh run
    refuses a directory holding an earlier run unless `force`, which moves that run into
    `RUN_DIR/.replaced-<UTC time>/`. Under torchrun rank 0 alone locks, moves and runs
    `after_run` (e.g. the CLI's curve and report writers), still holding the lock."""
    t_start = time.perf_counter()
    run_dir = Path(work_dir or Path("work_dirs") / safe_component(cfg.name))  # `name` comes from the config file
    if resume and force:
        raise ConfigError(f"{run_dir}: --resume continues the run there and --force sets it aside; choose one")
    if sets is not None and resume:
        raise ConfigError("a run on in-memory sets cannot be resumed")
    if cfg.log.tensorboard:
        summary_writer_class()  # a missing extra fails now, not after the first epoch
    if cfg.log.mlflow:
        require_mlflow(cfg.log.mlflow)
    if cfg.train.calibrate and cfg.data.val_fraction == 0 and not quiet:
        print("warning: train.calibrate fits the temperature on a validation split and this run has none "
              "(data.val_fraction is 0): no calibrated.pt will be written", file=sys.stderr)
    dinfo, dev = init_from_env(resolve_device(device or cfg.train.device))
    if not dinfo.main:
        return _run(cfg, run_dir, resume, dinfo, dev, True, t_start, (), sets, on_eval)
    if sets is None and cfg.data.root and Within(cfg.data.root).holds(run_dir):
        # a run folder among the images becomes a class of the data (its .lock, checkpoints, analysis/)
        raise ConfigError(f"--work-dir {run_dir}: is inside the data ({cfg.data.root}); choose a run folder "
                          "outside the dataset")
    check_work_dir(run_dir)
    with locked(run_dir):
        if not resume:
            moved = claim_fresh(run_dir, force)
            if moved is not None and not quiet:
                print(f"moved the earlier run in {run_dir} into {moved}")
        try:
            summary = _run(cfg, run_dir, resume, dinfo, dev, quiet, t_start, before_run, sets, on_eval)
            if cfg.train.calibrate and summary.get("eval_split") == "val":
                calibrate_run(run_dir, quiet)
            for hook in after_run:
                hook(run_dir)
        except BaseException as e:  # the MLflow run ends as the training did; --resume reopens it
            finish_mlflow(run_dir, cfg, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        finish_mlflow(run_dir, cfg)
    return summary


@dataclass
class Totals:
    """Where the run's time went [s], and the images trained on."""
    data: float = 0.0
    init: float = 0.0
    train: float = 0.0
    eval: float = 0.0
    images: int = 0
    last_val: dict[str, Any] = field(default_factory=dict)
    loop_start: float = 0.0  # perf_counter when this process began training, and the step it began at
    start_step: int = 0

    def eta(self, step: int, stop_at: int) -> str:
        """The whole run's time left, from this process's pace so far (training and evaluation):
        "4m05s"; "" before the first step."""
        done = step - self.start_step
        if done <= 0:
            return ""
        left = (time.perf_counter() - self.loop_start) / done * max(0, stop_at - step)
        return f"{int(left // 60)}m{int(left % 60):02d}s"


def _run(cfg: Config, run_dir: Path, resume: str | bool | None, dinfo: DistInfo, dev: torch.device, quiet: bool,
         t_start: float, before_run: Sequence[BeforeRun], sets: tuple[ImageSet, ImageSet] | None = None,
         on_eval: OnEval | None = None) -> dict[str, Any]:
    """The run itself, once the run directory is claimed (rank 0) or left to rank 0 (others)."""
    configure_torch(cfg, dev, dinfo)
    resume_path = find_resume(run_dir, resume)
    t, data, totals = build(cfg, dev, dinfo, fresh=resume_path is None, quiet=quiet, sets=sets)
    stopper = EarlyStop(cfg.train.early_stop.patience, cfg.train.early_stop.metric, cfg.train.early_stop.min_delta)
    if resume_path is not None:
        restore(t, stopper, resume_path, quiet)
    log = open_log(t, data, run_dir, resumed=resume_path is not None) if dinfo.main else None
    if not quiet and dinfo.main:
        print(start_line(t, data, run_dir), flush=True)
    if resume_path is None:
        for hook in before_run:
            hook(run_dir, data)
    if stopper.enabled and data.eval_name != "val" and dinfo.main:
        print(f"warning: train.early_stop watches the {data.eval_name!r} split, so the test score is no longer "
              "an unbiased estimate; hold out a validation set with data.val_fraction=0.1", file=sys.stderr)
    release_memory = hold_freed_memory() if dev.type == "cpu" and cfg.train.hold_memory else lambda: None
    totals.loop_start, totals.start_step = time.perf_counter(), t.state.step
    stopped = ""
    try:
        while t.state.step < t.stop_at:
            ep = run_epoch(t, data, log, quiet, totals)
            totals.train += ep.seconds
            totals.images += ep.images
            val = evaluate_epoch(t, data, log, totals, quiet, ep) if dinfo.main and eval_due(t) else {}
            if dinfo.main:
                save_checkpoints(t, stopper, data, run_dir, val)
            reason = (on_eval({"epoch": t.state.epoch, "iter": t.state.step, **val}) or "") if on_eval and val else ""
            if on_eval is not None and broadcast_flag(bool(reason) and t.state.step < t.stop_at, dinfo, dev):
                stopped = reason
                if log is not None:
                    log.write({"type": "stopped", "reason": reason, "epoch": t.state.epoch, "iter": t.state.step})
                if not quiet and dinfo.main:
                    print(f"stopped after epoch {t.state.epoch}: {reason}", flush=True)
                break
            if stopper.enabled and broadcast_flag(stopper.should_stop and t.state.step < t.stop_at, dinfo, dev):
                if log is not None:
                    log.write(stopper.record(t.state.epoch, t.state.step))
                if not quiet and dinfo.main:
                    print(f"early stop: no {stopper.metric} improvement in {stopper.patience} evaluations; "
                          f"best {stopper.best:.4g} at epoch {stopper.best_epoch} (best.pt)", flush=True)
                break
        summary = summarize(t, data, totals, run_dir, t_start, stopper) if dinfo.main else {}
        if stopped and dinfo.main:
            summary["stopped"] = stopped
        if log is not None:
            log.write({"type": "summary", **{k: v for k, v in summary.items() if k != "final"},
                       "final_top1": totals.last_val.get("top1"), "final_top5": totals.last_val.get("top5")})
    finally:
        if log is not None:
            log.close()
        release_memory()
    barrier(dinfo)
    cleanup(dinfo)
    if not dinfo.main:
        return {"run_dir": str(run_dir), "epochs": t.state.epoch, "iters": t.state.step, "final": {},
                "rank": dinfo.rank}
    if not quiet:
        print(format_summary(summary, cfg))
    return summary


def calibrate_run(run_dir: Path, quiet: bool) -> None:
    """`train.calibrate`: temperature scaling of best.pt on the run's validation split -> calibrated.pt."""
    best = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    r = calibrate(best, run_dir / "calibrated.pt", overwrite=True)
    if not quiet:
        print(f"calibrated {best.name} on val: temperature {r['temperature']:.3f}, ECE "
              f"{r['before']['ece'] * 100:.2f}% -> {r['after']['ece'] * 100:.2f}%, NLL {r['before']['nll']:.4f} -> "
              f"{r['after']['nll']:.4f} ({run_dir / 'calibrated.pt'})", flush=True)


def start_line(t: Trainer, data: RunData, run_dir: Path) -> str:
    """What a run prints first: model, where and in what precision it computes, and how long it is."""
    where = str(t.device)
    if t.device.type == "cpu":
        n = torch.get_num_threads()
        where += f" ({cpu_kind()}, {n} thread{'s' if n != 1 else ''})"
    return (f"training {t.cfg.model.name} on {where} in {precision_name(t.amp)}: {data.num_train} images, "
            f"{t.steps_per_epoch} steps/epoch x {t.cfg.train.epochs:g} epochs -> {run_dir}")


def configure_torch(cfg: Config, dev: torch.device, dinfo: DistInfo) -> None:
    """Set torch up for the run: threads, determinism or cuDNN autotuning, and the seed (+ rank).

    Raises:
        ConfigError: `train.batch_size` is not divisible by the number of processes.
    """
    if cfg.train.batch_size % dinfo.world:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by the {dinfo.world} "
                          "processes; it is the global batch, split evenly across ranks")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
    torch.manual_seed(cfg.train.seed + dinfo.rank)  # per-rank seed derived from the run seed


def find_resume(run_dir: Path, resume: str | bool | None) -> Path | None:
    """The checkpoint --resume continues from, or None for a fresh run.

    The path given, or (`resume` True) the newest valid checkpoint in `run_dir`.

    Raises:
        CifarkitError: `run_dir` holds no valid checkpoint to resume from.
    """
    if not resume:
        return None
    path = Path(resume) if isinstance(resume, (str, Path)) and resume is not True else newest_valid_checkpoint(run_dir)
    if path is None:
        raise CifarkitError(f"{run_dir}: --resume found no valid checkpoint to continue from")
    return path


def build_model(cfg: Config, dev: torch.device, data: RunData, fresh: bool, quiet: bool) -> torch.nn.Module:
    """The model on `dev`, data-initialised when fresh (model hook), in its training layout."""
    try:
        model = create_model(cfg.model.name, cfg.model.num_classes, pretrained=cfg.model.pretrained,
                             cifar_stem=cfg.model.cifar_stem, **cfg.model.kwargs)
    except (TypeError, ValueError) as e:  # a model.kwargs value of the wrong type or range
        raise ConfigError(f"model.kwargs {cfg.model.kwargs}: {cfg.model.name!r} cannot be built with them "
                          f"({str(e).splitlines()[0][:160]})") from None
    if getattr(model, "pretrained_report", None) and not quiet:
        print(model.pretrained_report)
    init = train_hooks(cfg.model.name).data_init
    if init is not None and not cfg.model.pretrained and fresh:
        init(model, normalize(data.train_images[:5000].to(dev), data.prep))
    return model.to(dev)


def build(cfg: Config, dev: torch.device, dinfo: DistInfo, fresh: bool, quiet: bool = False,
          sets: tuple[ImageSet, ImageSet] | None = None) -> tuple[Trainer, RunData, Totals]:
    """Data, model, optimiser, schedule, scaler and weight averages: a Trainer at step 0."""
    totals = Totals()
    t0 = time.perf_counter()
    data = build_data(cfg, dev, dinfo.rank, dinfo.world, sets)
    totals.data = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = build_model(cfg, dev, data, fresh, quiet)
    totals.init = time.perf_counter() - t0
    if dinfo.enabled and cfg.train.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    rescale_bn_momentum(model, micro_batches(cfg.train.batch_size // dinfo.world, cfg.train.micro_batch))
    amp = amp_dtype(cfg.train.amp, dev)
    optimizer = build_optimizer(cfg, model, amp)
    spe = len(data.loader)
    if spe == 0:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is larger than the {data.num_train} "
                          "training images; lower it")
    total = math.ceil(cfg.train.epochs * spe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(cfg, optimizer, total, spe))
    if dinfo.main:
        warn_slow_precision(amp, dev, f"train.amp={cfg.train.amp}")
    copy = lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}  # noqa: E731
    t = Trainer(cfg, model, model, optimizer, scheduler, dev, amp, total, spe, dinfo,
                scaler=torch.amp.GradScaler(dev.type) if amp == torch.float16 else None,
                ema=copy() if cfg.train.ema else None, lookahead=copy() if cfg.train.lookahead else None)
    weights = class_weights(cfg.train.class_weights, data.class_counts, cfg.train.cb_beta)
    t.class_weights = weights.to(dev) if weights is not None else None
    adjust = adjustment(cfg.train.logit_adjust, log_prior(data.class_counts))
    t.logit_adjust = adjust.to(dev) if adjust is not None else None
    use_compile = cfg.train.compile == "on" or (cfg.train.compile == "cuda" and dev.type == "cuda")
    t.net = torch.compile(model, mode=cfg.train.compile_mode) if use_compile else model
    return t, data, totals


def restore(t: Trainer, stopper: EarlyStop, path: Path, quiet: bool) -> None:
    """Continue from checkpoint `path`: weights, optimiser, schedule, averages, RNG, counters."""
    ck = load_checkpoint(path)
    check_resume_compatible(ck, t.cfg, path)
    try:
        t.model.load_state_dict(ck["model"])
    except RuntimeError as e:  # e.g. other model.kwargs (widths) than the run was trained with
        raise CheckpointError(f"{path}: its weights do not fit the model this config builds "
                              f"({str(e).splitlines()[-1].strip()[:160]}); resume with the config the run was "
                              "trained with (its config.yaml)") from None
    t.optimizer.load_state_dict(ck["optimizer"])
    t.scheduler.load_state_dict(ck["scheduler"])
    if t.scaler is not None and ck.get("scaler"):
        t.scaler.load_state_dict(ck["scaler"])
    if t.ema is not None and ck.get("ema"):
        t.ema = ck["ema"]
    if t.lookahead is not None and ck.get("lookahead"):
        t.lookahead = ck["lookahead"]
    torch.set_rng_state(ck["rng"]["torch"])
    if ck["rng"].get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    t.state = TrainState(ck["epoch"], ck["iter"], ck.get("best_top1", -1.0), ck.get("early_stop") or {},
                         ck.get("best_epoch", 0))
    stopper.load_state_dict(t.state.early_stop)
    check_not_finished(t, path)
    if not quiet:
        print(f"resumed from {path} (epoch {t.state.epoch}, iteration {t.state.step})")


def check_not_finished(t: Trainer, path: Path) -> None:
    """--resume of a run that has nothing left to train changes nothing and says so (before the
    log is touched: rewriting it would drop the run's summary for an empty one)."""
    if t.state.step < t.stop_at and not t.state.early_stop.get("stopped"):
        return
    cfg, s = t.cfg, t.state
    if s.early_stop.get("stopped"):
        more = "raise train.early_stop.patience (or set it to 0)"
    elif cfg.train.max_iters and cfg.train.max_iters <= s.step:
        more = f"raise train.max_iters above {s.step} (or set it to 0)"
    else:
        more = f"raise train.epochs above {cfg.train.epochs:g}"
    raise RunFinished(f"{path}: this run is already finished ({s.epoch} epochs, {s.step} iterations); "
                      f"nothing was changed; to train further {more} and --resume again, or start a new --work-dir")


def open_log(t: Trainer, data: RunData, run_dir: Path, resumed: bool) -> RunLog:
    """Save the run's `config.yaml` and open its `log.jsonl` with the sinks `log.*` asks for.

    The header records config, versions, device, data and schedule sizes; a resumed run keeps its
    log up to the checkpoint's iteration."""
    save_config(t.cfg, run_dir / "config.yaml")
    header = {"config": config_to_dict(t.cfg), "versions": versions(), "device": str(t.device),
              "precision": precision_name(t.amp),
              "seed": t.cfg.train.seed, "classes": data.classes, "params": count_params(t.model),
              "num_train": data.num_train, "class_counts": data.class_counts,
              "num_eval": len(data.eval_labels), "eval_split": data.eval_name,
              "steps_per_epoch": t.steps_per_epoch, "total_steps": t.total_steps, "world_size": t.dinfo.world}
    resume_iter = t.state.step if resumed else None
    return RunLog(run_dir / "log.jsonl", header, resume_iter=resume_iter,
                  sinks=make_sinks(t.cfg, run_dir, header, resume_iter))


# ---- the loop -----------------------------------------------------------------------------------
def run_epoch(t: Trainer, data: RunData, log: RunLog | None, quiet: bool, totals: Totals | None = None):
    """Model hooks, DDP rebuild, then the epoch's steps; closes the epoch unless stopped mid-way."""
    hook = train_hooks(t.cfg.model.name).epoch_start
    if hook is not None:
        hook(t.model, t.state.epoch, t.cfg.train)
    if t.dinfo.enabled:
        rewrap_ddp(t)
    data.loader.set_epoch(t.state.epoch)
    ep = train_one_epoch(t, data.loader, log, quiet,
                         (lambda step: totals.eta(step, t.stop_at)) if totals is not None else None)
    if t.state.step % t.steps_per_epoch == 0 or t.state.step >= t.total_steps:  # a max_iters stop stays open
        t.state.epoch += 1
    if t.state.step >= t.total_steps and t.lookahead is not None:
        ema_update(t.lookahead, t.model, 1.0, copy_back=True)  # final net = the lookahead average
    return ep


def rewrap_ddp(t: Trainer) -> None:
    """DDP fixes its set of gradient-carrying parameters when built: (re)build it when that set
    changes (airnet's whitening bias freezes after a few epochs)."""
    trainable = [p.requires_grad for p in t.model.parameters()]
    if isinstance(t.net, DistributedDataParallel) and getattr(t.net, "_cifarkit_trainable", None) == trainable:
        return
    inner = t.net.module if isinstance(t.net, DistributedDataParallel) else t.net
    t.net = DistributedDataParallel(inner, device_ids=[t.device.index] if t.device.type == "cuda" else None)
    t.net._cifarkit_trainable = trainable


def eval_due(t: Trainer) -> bool:
    """True when this epoch ends with an evaluation: every `eval.interval` epochs and at the last step."""
    return t.state.epoch % t.cfg.eval.interval == 0 or t.state.step >= t.stop_at


def evaluate_epoch(t: Trainer, data: RunData, log: RunLog, totals: Totals, quiet: bool, ep) -> dict[str, Any]:
    """Validation loss / top-1 / top-5 of the model (its EMA when train.ema), logged and printed."""
    cfg = t.cfg
    model = t.model
    if t.ema is not None:
        model = create_model(cfg.model.name, cfg.model.num_classes, cifar_stem=cfg.model.cifar_stem,
                             **cfg.model.kwargs).to(t.device)
        model.load_state_dict(t.ema)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    val = evaluate(model, data.eval_images, data.eval_labels, data.prep, cfg.eval.batch_size, t.device, t.amp,
                   cfg.eval.tta, cfg.train.channels_last, posthoc_bias(cfg.eval.logit_adjust, data.class_counts),
                   progress=False if quiet else None)
    totals.eval += time.perf_counter() - t0
    totals.last_val = val
    log.write({"type": "val", "epoch": t.state.epoch, "iter": t.state.step, "loss": val["loss"], "top1": val["top1"],
               "top5": val["top5"], "split": data.eval_name, "tta": cfg.eval.tta, "precision": precision_name(t.amp),
               **({"logit_adjust": cfg.eval.logit_adjust} if cfg.eval.logit_adjust else {})})
    if not quiet:
        print(f"epoch {t.state.epoch}/{math.ceil(t.total_steps / t.steps_per_epoch)}  train loss {ep.loss:.4f}  "
              f"{data.eval_name} loss {val['loss']:.4f}  top1 {val['top1']:.2f}  top5 {val['top5']:.2f}  "
              f"({ep.images / max(ep.seconds, 1e-9):.0f} img/s)"
              + (f"  run ETA {eta}" if (eta := totals.eta(t.state.step, t.stop_at)) and t.state.step < t.stop_at
                 else ""), flush=True)
    return val


def checkpoint_dict(t: Trainer, data: RunData) -> dict[str, Any]:
    """Everything a checkpoint holds, for resuming the run and for inference.

    Weights, optimiser, schedule, scaler, EMA and lookahead averages, RNG states, counters and
    early-stop state; classes, training class counts, config, preprocessing and versions."""
    return {
        "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "ema": t.ema, "lookahead": t.lookahead,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "epoch": t.state.epoch, "iter": t.state.step, "best_top1": t.state.best_top1, "best_epoch": t.state.best_epoch,
        "early_stop": t.state.early_stop,
        "classes": list(data.classes), "config": config_to_dict(t.cfg), "preprocess": data.prep.as_dict(),
        "data_root": str(Path(t.cfg.data.root).resolve()),  # data.root is kept as typed; this works from anywhere
        "model_name": t.cfg.model.name, "versions": versions(), "class_counts": list(data.class_counts),
        "precision": precision_name(t.amp), "device": str(t.device),
    }


def save_checkpoints(t: Trainer, stopper: EarlyStop, data: RunData, run_dir: Path, val: dict[str, Any]) -> None:
    """last.pt every epoch; best.pt when this evaluation is the best (by top-1, or by the early-stop
    metric when early stopping is on); epoch_N.pt every checkpoint.interval whole epochs."""
    best = False
    if val:
        if stopper.enabled:
            best = stopper.update(val, t.state.epoch)
            t.state.early_stop = {**stopper.state_dict(), "stopped": stopper.should_stop and t.state.step < t.stop_at}
        else:
            best = val["top1"] > t.state.best_top1
        if best:
            t.state.best_top1, t.state.best_epoch = val["top1"], t.state.epoch  # what best.pt holds
    ck = checkpoint_dict(t, data)
    atomic_save(ck, run_dir / "last.pt")
    if best and t.cfg.checkpoint.save_best:
        atomic_save(ck, run_dir / "best.pt")
    if t.state.epoch % t.cfg.checkpoint.interval == 0 and t.state.step % t.steps_per_epoch == 0:
        atomic_save(ck, run_dir / f"epoch_{t.state.epoch}.pt")


def summarize(t: Trainer, data: RunData, totals: Totals, run_dir: Path, t_start: float,
              stopper: EarlyStop) -> dict[str, Any]:
    """The run's summary, which `fit` returns and logs: epochs, iterations, top-1, time [s]."""
    return {"run_dir": str(run_dir), "epochs": t.state.epoch, "iters": t.state.step, "final": totals.last_val,
            "best_top1": t.state.best_top1, "best_epoch": t.state.best_epoch, "eval_split": data.eval_name,
            "seconds": time.perf_counter() - t_start,
            "train_seconds": totals.train, "eval_seconds": totals.eval, "data_seconds": totals.data,
            "init_seconds": totals.init, "train_img_per_s": totals.images / totals.train if totals.train else 0.0,
            "early_stopped": bool(t.state.early_stop.get("stopped"))}


def format_summary(s: dict[str, Any], cfg: Config) -> str:
    """The block `fit` prints at the end of a run: final and best top-1, and the time taken."""
    f = s["final"] or {}
    lines = [
        "-" * 64,
        f"run       {s['run_dir']}   ({cfg.model.name}, {s['epochs']} epochs, {s['iters']} iterations)",
        f"final     {s['eval_split']} top1 {f.get('top1', float('nan')):.2f}  top5 {f.get('top5', float('nan')):.2f}"
        f"  loss {f.get('loss', float('nan')):.4f}   (last.pt, epoch {s['epochs']})",
        f"best      {s['eval_split']} top1 {s['best_top1']:.2f}   (best.pt, epoch {s.get('best_epoch') or '?'}"
        + (", chosen on the test split: optimistic; data.val_fraction selects on a validation split)"
           if s["eval_split"] != "val" else ")"),
        f"time      {s['seconds']:.1f} s wall, {s['train_seconds']:.1f} s training "
        f"({s['train_img_per_s']:.0f} img/s), {s['data_seconds']:.1f} s loading data",
        "-" * 64,
    ]
    return "\n".join(lines)
