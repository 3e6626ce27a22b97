"""Former home of the run set-up helpers, split by what they hold (engine v2); these names are
re-exported so older imports keep working. New code imports from the modules named here."""

from cifarkit.data.splits import RunData, build_data, load_eval_split, load_train_split
from cifarkit.engine.checkpoint import check_resume_compatible
from cifarkit.engine.device import amp_dtype, resolve_device, versions
from cifarkit.engine.memory import hold_freed_memory
from cifarkit.engine.optimizers import build_optimizer, lr_factor, lr_lambdas
from cifarkit.engine.rundir import check_work_dir

__all__ = ["RunData", "amp_dtype", "build_data", "build_optimizer", "check_resume_compatible", "check_work_dir",
           "hold_freed_memory", "load_eval_split", "load_train_split", "lr_factor", "lr_lambdas", "resolve_device",
           "versions"]
