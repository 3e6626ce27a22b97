"""`fit`: train a model from a `Config`, torchvision-references style.

    fit -> build data/model/optimiser -> for each epoch: train_one_epoch, evaluate, checkpoint

Everything a run produces lands in its run directory (`config.yaml`, `log.jsonl`, `last.pt`,
`best.pt`, `epoch_N.pt`). An epoch's data order and augmentation are a pure function of
(seed, epoch, batch), so a resumed run replays the exact batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cifarkit.config import Config, config_to_dict, save_config
from cifarkit.engine.checkpoint import atomic_save, load_checkpoint, newest_valid_checkpoint
from cifarkit.engine.evaluate import autocast_ctx, evaluate
from cifarkit.engine.rundir import claim_fresh, locked
from cifarkit.engine.runlog import RunLog
from cifarkit.engine.setup import (
    RunData,
    _versions,
    amp_dtype,
    build_data,
    build_optimizer,
    check_resume_compatible,
    check_work_dir,
    hold_freed_memory,
    lr_lambdas,
    resolve_device,
)
from cifarkit.errors import CifarkitError, ConfigError
from cifarkit.safepath import safe_component


class TrainingDiverged(CifarkitError):
    """The loss became NaN/inf and `train.nan_policy` is `stop`."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float, copy_back: bool = False) -> None:
    """ema <- decay * ema + (1 - decay) * weights for float tensors; other buffers are copied.
    copy_back writes the average into the model (airbench's lookahead)."""
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            ema[k].lerp_(v, 1 - decay)
            if copy_back:
                v.copy_(ema[k])
        else:
            ema[k].copy_(v)


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


def defer_loss_sync(device: torch.device) -> bool:
    """On CUDA the loss stays on the device: a host sync per step would idle the GPU while Python
    queues the next step. Deferred losses are checked for NaN/inf at each log record and at the
    epoch's end, before any checkpoint is written; skip_batch and torchrun still decide per step."""
    return device.type == "cuda"


def _diverged(value: float, epoch: int, iteration: int) -> TrainingDiverged:
    return TrainingDiverged(f"loss became {value} at epoch {epoch + 1}, iteration {iteration}; the last good "
                            "checkpoint is kept; lower optim.lr or set train.nan_policy=skip_batch")


# ---- the loop ---------------------------------------------------------------------------------
@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # completed iterations, all epochs
    best_top1: float = -1.0


def stop_step(cfg: Config, total: int) -> int:
    """The iteration a run stops at: its last one, or train.max_iters when that comes first."""
    return min(total, cfg.train.max_iters) if cfg.train.max_iters else total


def check_not_finished(cfg: Config, state: TrainState, stop_at: int, path: Path) -> None:
    """--resume of a run that has nothing left to train changes nothing and says so (before the
    log is touched: rewriting it would drop the run's summary for an empty one)."""
    if state.step < stop_at:
        return
    if cfg.train.max_iters and cfg.train.max_iters <= state.step:
        more = f"raise train.max_iters above {state.step} (or set it to 0)"
    else:
        more = f"raise train.epochs above {cfg.train.epochs:g}"
    raise RunFinished(f"{path}: this run is already finished ({state.epoch} epochs, {state.step} iterations); "
                      f"nothing was changed; to train further {more} and --resume again, or start a new --work-dir")


def train_one_epoch(model, loader, optimizer, scheduler, state: TrainState, cfg: Config, device, amp,
                    total_steps: int, log: RunLog | None, ema=None, lookahead=None, quiet: bool = False,
                    dinfo=None, scaler=None) -> dict:
    """One pass over the loader (or up to the step limit); returns loss, images, seconds."""
    from cifarkit.engine.dist import DistInfo, all_reduce_sum

    dinfo = dinfo or DistInfo()
    raw = unwrap(model)  # EMA/lookahead/buffers work on the plain module's names
    from tqdm import tqdm

    model.train()
    t = cfg.train
    stop_at = stop_step(cfg, total_steps)
    # batches of this epoch already trained (a run stopped mid-epoch by train.max_iters and resumed):
    # the epoch's batches are a pure function of (seed, epoch), so skipping them replays exactly
    first = state.step - state.epoch * len(loader)
    end = min(len(loader), stop_at - state.epoch * len(loader))
    n_batches = end - first
    losses, seen, skipped = [], 0, 0
    sync_each_step = not defer_loss_sync(device) or t.nan_policy == "skip_batch" or dinfo.enabled
    pending: list[tuple[int, torch.Tensor, int]] = []  # (iteration, summed loss, batch size)

    def flush() -> None:
        if not pending:
            return
        values = torch.stack([v for _, v, _ in pending]).cpu().tolist()
        for (it, _, n), v in zip(pending, values):
            if not math.isfinite(v):
                raise _diverged(v, state.epoch, it)
            losses.append(v / (n if t.loss_reduction == "sum" else 1))  # per image
        pending.clear()

    t_epoch = time.perf_counter()
    t_last = t_data = time.perf_counter()
    data_time = 0.0
    bar = tqdm(total=n_batches, desc=f"epoch {state.epoch + 1}", unit="it", leave=False,
               disable=True if quiet else None)
    for i, (x, y) in enumerate(loader):
        if i < first:
            continue
        if i >= end:
            break
        data_time += time.perf_counter() - t_data
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        # a skipped batch must not leave NaN in BatchNorm's running statistics either
        saved = [b.detach().clone() for b in raw.buffers()] if t.nan_policy == "skip_batch" else None
        # micro-batches: the same summed gradient from smaller chunks, for batches that do not fit
        # in memory. Not a CPU speed-up once freed memory is held (hold_freed_memory): airnet at
        # 2000 per step took 1.73-1.97 s in one piece, 1.92 in chunks of 500 (fresh processes)
        mb = t.micro_batch if 0 < t.micro_batch < len(y) else len(y)
        loss = torch.zeros((), device=device)
        for xc, yc in zip(x.split(mb), y.split(mb)):
            with autocast_ctx(device, amp):
                logits = model(xc)
            part = F.cross_entropy(logits.float(), yc, label_smoothing=t.label_smoothing,
                                   reduction=t.loss_reduction)
            if t.loss_reduction == "mean":
                part = part * (len(yc) / len(y))
            # DDP averages gradients over ranks; a summed loss must be the sum over the global batch
            scaled = part * dinfo.world if t.loss_reduction == "sum" else part
            (scaler.scale(scaled) if scaler is not None else scaled).backward()  # fp16: loss scaling
            loss = loss + part.detach().float()
        if dinfo.enabled:  # every rank takes the same skip/stop decision
            loss = all_reduce_sum(loss, dinfo) / dinfo.world
        value = loss.item() if sync_each_step else 0.0
        if not math.isfinite(value):
            if t.nan_policy == "stop":
                raise _diverged(value, state.epoch, state.step + 1)
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, old in zip(raw.buffers(), saved):
                    b.copy_(old)
            skipped += 1
            state.step += 1
            scheduler.step()
            continue
        if scaler is not None:
            scaler.unscale_(optimizer)
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        state.step += 1
        if ema is not None:
            ema_update(ema, raw, t.ema_decay)
        if lookahead is not None and state.step % 5 == 0:
            # airbench94: every 5 steps pull the weights to an EMA whose decay ramps up as
            # 0.95^5 * (progress)^3, i.e. late training is averaged hardest
            ema_update(lookahead, raw, 0.95 ** 5 * (state.step / total_steps) ** 3, copy_back=True)
        pending.append((state.step, loss, len(y)))
        if sync_each_step:
            flush()
        seen += len(y)
        bar.update(1)
        if log is not None and state.step % cfg.log.interval == 0:
            flush()
            now = time.perf_counter()
            k = min(cfg.log.interval, len(losses))
            log.write({"type": "train", "epoch": state.epoch + 1, "iter": state.step,
                       "lr": optimizer.param_groups[0]["lr"], "loss": float(np.mean(losses[-k:])),
                       "time": (now - t_last) / cfg.log.interval, "data_time": data_time / cfg.log.interval})
            t_last, data_time = now, 0.0
            bar.set_postfix(loss=f"{np.mean(losses[-k:]):.3f}")
        t_data = time.perf_counter()
    flush()
    bar.close()
    dt = time.perf_counter() - t_epoch
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "images": seen, "seconds": dt,
            "skipped": skipped, "batches": n_batches}


def _checkpoint(model, optimizer, scheduler, state: TrainState, cfg: Config, data: RunData, ema, lookahead,
                scaler) -> dict[str, Any]:
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema, "lookahead": lookahead,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "epoch": state.epoch, "iter": state.step, "best_top1": state.best_top1,
        "classes": list(data.classes), "config": config_to_dict(cfg), "preprocess": data.prep.as_dict(),
        "model_name": cfg.model.name, "versions": _versions(),
    }


class RunFinished(CifarkitError):
    """--resume found a run that has already trained every step its config asks for."""


def fit(cfg: Config, work_dir: str | Path | None = None, resume: str | bool | None = None,
        device: str | None = None, quiet: bool = False, force: bool = False) -> dict[str, Any]:
    """Train `cfg`; returns a summary (best/final top-1, time, run directory).

    The run directory is locked while training (a second run on it fails at once). A fresh run
    refuses a directory holding an earlier run unless `force`, which moves that run into
    `RUN_DIR/.replaced-<UTC time>/`. Under torchrun rank 0 alone locks and moves."""
    from cifarkit.engine.dist import init_from_env

    t_start = time.perf_counter()
    run_dir = Path(work_dir or Path("work_dirs") / safe_component(cfg.name))  # `name` comes from the config file
    if resume and force:
        raise ConfigError(f"{run_dir}: --resume continues the run there and --force sets it aside; choose one")
    dinfo, dev = init_from_env(resolve_device(device or cfg.train.device))
    if not dinfo.main:
        return _fit(cfg, run_dir, resume, dinfo, dev, True, t_start)
    check_work_dir(run_dir)
    with locked(run_dir):
        if not resume:
            moved = claim_fresh(run_dir, force)
            if moved is not None and not quiet:
                print(f"moved the earlier run in {run_dir} into {moved}")
        return _fit(cfg, run_dir, resume, dinfo, dev, quiet, t_start)


def _fit(cfg: Config, run_dir: Path, resume: str | bool | None, dinfo, dev: torch.device, quiet: bool,
         t_start: float) -> dict[str, Any]:
    """The run itself, once the run directory is claimed (rank 0) or left to rank 0 (others)."""
    from cifarkit.engine.dist import barrier, cleanup
    from cifarkit.models import count_params, create_model

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
    amp = amp_dtype(cfg.train.amp, dev)

    resume_path = None
    if resume:
        resume_path = Path(resume) if isinstance(resume, (str, Path)) and resume is not True else \
            newest_valid_checkpoint(run_dir)
        if resume_path is None:
            raise CifarkitError(f"{run_dir}: --resume found no valid checkpoint to continue from")
    t0 = time.perf_counter()
    data = build_data(cfg, dev, dinfo.rank, dinfo.world)
    t_data = time.perf_counter() - t0

    model = create_model(cfg.model.name, cfg.model.num_classes, pretrained=cfg.model.pretrained,
                         cifar_stem=cfg.model.cifar_stem, **cfg.model.kwargs)
    if getattr(model, "pretrained_report", None) and not quiet:
        print(model.pretrained_report)
    t0 = time.perf_counter()
    if hasattr(model, "data_init") and not cfg.model.pretrained and resume_path is None:
        from cifarkit.data.loader import normalize

        model.data_init(normalize(data.train_images[:5000].to(dev), data.prep))
    model.to(dev)
    t_init = time.perf_counter() - t0
    if dinfo.enabled and cfg.train.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    rescale_bn_momentum(model, micro_batches(cfg.train.batch_size // dinfo.world, cfg.train.micro_batch))
    optimizer = build_optimizer(cfg, model)
    spe = len(data.loader)
    if spe == 0:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is larger than the {data.num_train} "
                          "training images; lower it")
    total = math.ceil(cfg.train.epochs * spe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(cfg, optimizer, total, spe))
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.train.ema else None
    lookahead = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.train.lookahead else None
    state = TrainState()

    if resume_path is not None:
        ck = load_checkpoint(resume_path)
        check_resume_compatible(ck, cfg, resume_path)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema"):
            ema = ck["ema"]
        if lookahead is not None and ck.get("lookahead"):
            lookahead = ck["lookahead"]
        torch.set_rng_state(ck["rng"]["torch"])
        if ck["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        state = TrainState(ck["epoch"], ck["iter"], ck.get("best_top1", -1.0))
        check_not_finished(cfg, state, stop_step(cfg, total), resume_path)
        if not quiet:
            print(f"resumed from {resume_path} (epoch {state.epoch}, iteration {state.step})")

    use_compile = cfg.train.compile == "on" or (cfg.train.compile == "cuda" and dev.type == "cuda")
    compiled = torch.compile(model, mode=cfg.train.compile_mode) if use_compile else model

    def wrap_ddp() -> torch.nn.Module:
        # DDP fixes its set of gradient-carrying parameters when built: rebuild it when that set
        # changes (airnet's whitening bias freezes after a few epochs)
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(compiled, device_ids=[dev.index] if dev.type == "cuda" else None)

    train_model = wrap_ddp() if dinfo.enabled else compiled
    trainable = [p.requires_grad for p in model.parameters()]
    if dinfo.main:
        save_config(cfg, run_dir / "config.yaml")
    header = {"config": config_to_dict(cfg), "versions": _versions(), "device": str(dev), "seed": cfg.train.seed,
              "classes": data.classes, "params": count_params(model), "num_train": data.num_train,
              "num_eval": len(data.eval_labels), "eval_split": data.eval_name, "steps_per_epoch": spe,
              "total_steps": total}
    header["world_size"] = dinfo.world
    log = RunLog(run_dir / "log.jsonl", header, resume_iter=state.step if resume_path else None) \
        if dinfo.main else None

    epochs = math.ceil(total / spe)
    stop_at = stop_step(cfg, total)
    last_val: dict[str, Any] = {}
    train_seconds, eval_seconds, images_seen = 0.0, 0.0, 0
    release_memory = hold_freed_memory() if dev.type == "cpu" and cfg.train.hold_memory else lambda: None
    try:
        while state.step < stop_at:
            if hasattr(model, "set_whiten_bias_trainable") and cfg.train.whiten_bias_epochs:
                model.set_whiten_bias_trainable(state.epoch < cfg.train.whiten_bias_epochs)
            now = [p.requires_grad for p in model.parameters()]
            if dinfo.enabled and now != trainable:
                train_model, trainable = wrap_ddp(), now
            data.loader.set_epoch(state.epoch)
            ep = train_one_epoch(train_model, data.loader, optimizer, scheduler, state, cfg, dev, amp, total,
                                 log, ema, lookahead, quiet, dinfo, scaler)
            train_seconds += ep["seconds"]
            images_seen += ep["images"]
            done = state.step >= stop_at
            if state.step % spe == 0 or state.step >= total:  # a max_iters stop mid-epoch stays open
                state.epoch += 1
            if state.step >= total and lookahead is not None:
                ema_update(lookahead, model, 1.0, copy_back=True)  # final net = the lookahead average
            if not dinfo.main:
                continue  # the other ranks go on to the next epoch; DDP's all-reduce waits for rank 0
            if state.epoch % cfg.eval.interval == 0 or done:
                eval_model = model
                if ema is not None:
                    eval_model = create_model(cfg.model.name, cfg.model.num_classes, cifar_stem=cfg.model.cifar_stem,
                                              **cfg.model.kwargs).to(dev)
                    eval_model.load_state_dict(ema)
                    if cfg.train.channels_last:
                        eval_model.to(memory_format=torch.channels_last)
                tta = cfg.eval.tta
                t_eval = time.perf_counter()
                last_val = evaluate(eval_model, data.eval_images, data.eval_labels, data.prep, cfg.eval.batch_size,
                                    dev, amp, tta, cfg.train.channels_last)
                eval_seconds += time.perf_counter() - t_eval
                log.write({"type": "val", "epoch": state.epoch, "iter": state.step, "loss": last_val["loss"],
                           "top1": last_val["top1"], "top5": last_val["top5"], "split": data.eval_name,
                           "tta": tta})
                if not quiet:
                    print(f"epoch {state.epoch}/{epochs}  train loss {ep['loss']:.4f}  {data.eval_name} loss "
                          f"{last_val['loss']:.4f}  top1 {last_val['top1']:.2f}  top5 {last_val['top5']:.2f}  "
                          f"({ep['images'] / max(ep['seconds'], 1e-9):.0f} img/s)", flush=True)
            ck = _checkpoint(model, optimizer, scheduler, state, cfg, data, ema, lookahead, scaler)
            atomic_save(ck, run_dir / "last.pt")
            if last_val and last_val["top1"] > state.best_top1 and cfg.checkpoint.save_best:
                state.best_top1 = last_val["top1"]
                ck["best_top1"] = state.best_top1
                atomic_save(ck, run_dir / "best.pt")
            if state.epoch % cfg.checkpoint.interval == 0 and state.step % spe == 0:
                atomic_save(ck, run_dir / f"epoch_{state.epoch}.pt")
    finally:
        if log is not None:
            log.close()
        release_memory()
    barrier(dinfo)
    if not dinfo.main:
        cleanup(dinfo)
        return {"run_dir": str(run_dir), "epochs": state.epoch, "iters": state.step, "final": {}, "rank": dinfo.rank}
    wall = time.perf_counter() - t_start
    summary = {"run_dir": str(run_dir), "epochs": state.epoch, "iters": state.step, "final": last_val,
               "best_top1": state.best_top1, "eval_split": data.eval_name, "seconds": wall,
               "train_seconds": train_seconds, "eval_seconds": eval_seconds, "data_seconds": t_data,
               "init_seconds": t_init,
               "train_img_per_s": images_seen / train_seconds if train_seconds else 0.0}
    with open(run_dir / "log.jsonl", "a", encoding="utf-8") as f:
        import json

        f.write(json.dumps({"type": "summary", **{k: v for k, v in summary.items() if k != "final"},
                            "final_top1": last_val.get("top1"), "final_top5": last_val.get("top5")}) + "\n")
    if cfg.log.plots:
        _write_plots(run_dir, quiet)
    if not quiet:
        print(format_summary(summary, cfg))
    cleanup(dinfo)
    return summary


def _write_plots(run_dir: Path, quiet: bool) -> None:
    """curves.png and report.html at the end of a run; a failure here only warns, since a
    figure must never cost the user their finished run."""
    from cifarkit.analysis.curves import plot_runs
    from cifarkit.analysis.report import write_report

    for what, make in (("curves", lambda: plot_runs([run_dir], run_dir / "curves.png")),
                       ("report", lambda: write_report(run_dir))):
        try:
            out = make()
            if not quiet:
                print(f"wrote {out}")
        except (CifarkitError, OSError, ValueError) as e:
            print(f"warning: {what} not written: {e}", file=sys.stderr)


def format_summary(s: dict[str, Any], cfg: Config) -> str:
    f = s["final"] or {}
    lines = [
        "-" * 64,
        f"run       {s['run_dir']}   ({cfg.model.name}, {s['epochs']} epochs, {s['iters']} iterations)",
        f"final     {s['eval_split']} top1 {f.get('top1', float('nan')):.2f}  top5 {f.get('top5', float('nan')):.2f}"
        f"  loss {f.get('loss', float('nan')):.4f}",
        f"best      top1 {s['best_top1']:.2f}",
        f"time      {s['seconds']:.1f} s wall, {s['train_seconds']:.1f} s training "
        f"({s['train_img_per_s']:.0f} img/s), {s['data_seconds']:.1f} s loading data",
        "-" * 64,
    ]
    return "\n".join(lines)
