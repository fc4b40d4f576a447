"""Training and evaluation on audio-video QA (``mirasol train``, ``mirasol eval``).

One loop serves one process and ``torchrun`` (DDP, or FSDP2 ``fully_shard`` with
``fsdp=True``): step s trains on global examples ``[s·G, (s+1)·G)`` (G the global batch),
rank r on its contiguous share of them. The batch of a step depends on nothing but the step,
so a run resumed from a checkpoint continues exactly as if it had not stopped, and N ranks
see the same global batch as one process. Only rank 0 writes checkpoints, metrics and
reports.

Run folder: ``metrics.jsonl`` (one JSON object per logged step and per evaluation),
``checkpoints/step-XXXXXXX/`` (``model.safetensors`` + ``config.json``: loadable by
:func:`mirasol.model.load_checkpoint`; ``optimizer.safetensors`` + ``trainer.json`` to
resume; under FSDP2 ``shards/`` in place of both safetensors files, one file per rank, which
``mirasol export`` consolidates), ``checkpoints/last`` (the latest one's name).

Killed at any moment (SIGKILL included), a run loses only the steps since its last
checkpoint: a checkpoint is written into a hidden temporary folder and renamed into place
when complete, ``last`` is replaced in one rename, and a restart resumes from the newest
checkpoint that loads (a damaged one is skipped with a warning naming it), dropping the
``metrics.jsonl`` records of the steps it runs again (tests/test_fault_tolerance.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import Tensor, nn

from mirasol._options import option
from mirasol.data import ByteTokenizer, media_args
from mirasol.data.synthetic import (ABLATIONS, SPLITS, SyntheticAVQA, SyntheticConfig, ablate,
                                    collate)
from mirasol.model import PRESETS, Mirasol, MirasolConfig, load_checkpoint, preset
from mirasol.model.checkpoint import (CONFIG, SHARDS, WEIGHTS, CheckpointError,
                                      atomic_directory, load_config, load_state, publish,
                                      read_json, read_tensors, save_checkpoint,
                                      write_checkpoint, write_text_atomic)
from mirasol.model.config import COMBINERS
from mirasol.ops import BACKENDS

TOKENIZER = ByteTokenizer()


@dataclass
class TrainConfig:
    """Everything a run needs; saved in each checkpoint's ``trainer.json``. Every field is a
    flag of ``mirasol train`` (its help below).

    The model is ``preset(preset, **model)`` (``model``: :meth:`MirasolConfig.replace`
    changes), with ``combiner`` as a shortcut. ``lr`` peaks after ``warmup`` linear steps and
    follows a cosine to 0 at ``steps``. The audio-video side (everything but the text
    decoder) stays at learning rate 0 for the first ``av_warmup_steps`` and then learns at
    ``av_lr_scale`` × lr: trained jointly from the start, the untrained decoder's gradients
    wash the chunk content out of the latents and the model sits at chance (measured on the
    synthetic task); a decoder that first learns to read the initial latents keeps it."""

    out: str = option("runs/tiny", help="run folder (resumed when it holds a checkpoint)")
    preset: str = option("tiny", help="model preset", choices=tuple(PRESETS))
    model: dict[str, Any] = option(
        default_factory=dict,
        help='JSON of MirasolConfig.replace changes, e.g. \'{"text": {"depth": 4}}\'')
    combiner: str | None = option(None, help="the Combiner, instead of the preset's",
                                  choices=COMBINERS)
    data: str = option("synthetic", help="synthetic (mirasol.data.synthetic), or a JSON-lines "
                                         "manifest (mirasol.data.manifest)")
    val_data: str | None = option(None, help="validation manifest (with a manifest as data)")
    ablation: str = option("full", choices=ABLATIONS,
                           help="the modalities kept in training and evaluation (a removed "
                                "video or audio is zeros; the question is always kept)")
    steps: int = option(1000, help="length of the schedule (the cosine reaches 0 here)")
    stop_at: int | None = option(None, help="stop after this step; the same command again "
                                            "resumes (a run split across time-limited jobs)")
    batch_size: int = option(32, help="global batch size: all processes together")
    lr: float = option(2e-3, help="peak learning rate (AdamW)")
    weight_decay: float = option(0.05, help="AdamW weight decay of matrices (none on norms "
                                            "and biases)")
    warmup: int = option(100, help="steps of linear warm-up to lr")
    grad_clip: float = option(1.0, help="largest global gradient norm")
    av_warmup_steps: int = option(800, help="steps the audio-video side stays at learning "
                                            "rate 0 while the text decoder learns to read its "
                                            "latents (without it the model stays at chance)")
    av_lr_scale: float = option(0.3, help="the audio-video side's learning rate after "
                                          "av_warmup_steps, as a multiple of the schedule's")
    log_every: int = option(10, help="steps between records in metrics.jsonl")
    eval_every: int = option(0, help="steps between validation evaluations (0: none)")
    eval_size: int = option(256, help="validation examples per evaluation")
    checkpoint_every: int = option(500, help="steps between checkpoints, the last step and "
                                             "stop_at included (0: none)")
    keep: int | None = option(None, help="keep only the newest K checkpoints (default: all)")
    seed: int = option(0, help="seed of the initial weights and the synthetic data")
    backend: str = option("auto", choices=BACKENDS, help="backend of every fast layer")
    dtype: str = option("auto", choices=("auto", "float32", "bfloat16"),
                        help="the forward's autocast dtype (weights and optimizer stay "
                             "float32): auto is bfloat16 on CUDA, float32 on CPU; bfloat16 "
                             "on CPU runs the attention ops natively in bf16 (AMX)")
    time_offsets: int = option(0, help="each step's clips start at a chunk index drawn from "
                                       "[0, time_offsets) of the timeline (the A/V model's "
                                       "time embedding): a windowed model then streams for "
                                       "longer than its clips at times it was trained at "
                                       "(0: every clip starts at chunk 0)")
    fsdp: bool = option(False, help="under torchrun: FSDP2 (fully_shard) instead of DDP")
    context_parallel: int = option(1, help="under torchrun: ranks that share each clip's "
                                           "chunks in the A/V model (context parallelism, "
                                           "mirasol.distributed), the processes forming a "
                                           "(data, context) DeviceMesh; data parallelism "
                                           "(DDP or FSDP2) spans every rank")
    num_workers: int = option(0, help="DataLoader worker processes")
    resume: bool = option(True, help="continue from the run folder's last checkpoint")
    progress: bool = option(True, help="show a progress bar")

    def model_config(self) -> MirasolConfig:
        config = preset(self.preset, **self.model)
        if self.combiner is not None:
            config = config.replace(combiner={"kind": self.combiner})
        return config


# -- data -------------------------------------------------------------------------------


def _autocast(device: torch.device, dtype: str):
    """Mixed precision of a training forward: bf16 autocast where ``dtype`` (or, for
    "auto", the device: CUDA) asks for it, on CPU as on CUDA."""
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def dataset(config: TrainConfig, model_config: MirasolConfig, split: str,
            size: int) -> torch.utils.data.Dataset:
    """The examples of a split: synthetic clips drawn for the model's frame rate, image size
    and sample rate, or a manifest's (``val``/``test`` read ``val_data``)."""
    if config.data == "synthetic":
        return SyntheticAVQA(SyntheticConfig.for_model(model_config), split, size, config.seed)
    from mirasol.data.manifest import ManifestDataset

    path = config.data if split == "train" else config.val_data
    if path is None:
        raise ValueError("evaluating a manifest-trained model needs val_data (a manifest)")
    return ManifestDataset(path, **media_args(model_config))


def step_indices(step: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Rank ``rank``'s examples of global step ``step``."""
    if batch_size % world:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of "
                         f"data-parallel ranks ({world})")
    share = batch_size // world
    first = step * batch_size + rank * share
    return list(range(first, first + share))


def _batches(data, batch_indices: Sequence[list[int]], workers: int):
    size = len(data)
    sampler = [[i % size for i in indices] for indices in batch_indices]
    return torch.utils.data.DataLoader(
        data, batch_sampler=sampler, num_workers=workers,
        collate_fn=lambda examples: collate(examples, TOKENIZER))


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


# -- optimization -----------------------------------------------------------------------


def optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; matrices decay, vectors (norms, biases) do not. Groups 0-1: the text decoder;
    2-3: the audio-video side (see :func:`lr_factors`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = []
    for text in (True, False):
        part = [p for n, p in named if n.removeprefix("module.").startswith("text.") == text]
        groups += [{"params": [p for p in part if p.dim() >= 2],
                    "weight_decay": config.weight_decay},
                   {"params": [p for p in part if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


def lr_factors(config: TrainConfig) -> list[Callable[[int], float]]:
    """Per optimizer group: the text decoder follows :func:`lr_factor`; the audio-video side
    is 0 for ``av_warmup_steps``, then ``av_lr_scale`` × :func:`lr_factor`."""
    def text(step: int) -> float:
        return lr_factor(step, config.warmup, config.steps)

    def av(step: int) -> float:
        return 0.0 if step < config.av_warmup_steps else config.av_lr_scale * text(step)

    return [text, text, av, av]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then a cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# -- distributed ------------------------------------------------------------------------


@dataclass
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Context:
    """torchrun's environment -> a process group (gloo on CPU, nccl on CUDA); one process
    without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, device)


def context_mesh(ctx: Context, context: int) -> tuple[int, int, dist.ProcessGroup | None]:
    """(data rank, data-parallel ranks, context group) of this process: the processes as a
    (data, context) DeviceMesh, ``context`` consecutive ranks sharing each clip."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1 \
            or ctx.world % context:
        raise ValueError(f"context_parallel must be a positive int dividing the number of "
                         f"processes ({ctx.world}), got {context!r}")
    if context == 1:
        return ctx.rank, ctx.world, None
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(ctx.device.type, (ctx.world // context, context),
                            mesh_dim_names=("data", "context"))
    return mesh.get_local_rank("data"), mesh.size(0), mesh.get_group("context")


def wrap(model: Mirasol, ctx: Context, fsdp: bool) -> nn.Module:
    """DDP, or FSDP2 with each encoder, Combiner and A/V block, the text decoder (whole: its
    layers' cross-attention keys are projected once per forward, outside the layers) and
    then the root sharded."""
    if ctx.world == 1:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        from mirasol.layers import Block
        from mirasol.model.av import AVBlock

        for module in model.modules():
            if isinstance(module, (Block, AVBlock)):
                fully_shard(module)
        fully_shard(model.text)
        return fully_shard(model)
    return nn.parallel.DistributedDataParallel(model)


# -- checkpoints ------------------------------------------------------------------------

# Beside the model's two files (mirasol.model.checkpoint), what resuming needs.
OPTIMIZER, TRAINER = "optimizer.safetensors", "trainer.json"


def _flat_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    """An optimizer state_dict (parameter names as keys) as safetensors tensors + JSON."""
    tensors = {f"{name}/{key}": value.detach().contiguous().cpu()
               for name, entries in state["state"].items() for key, value in entries.items()}
    return tensors, {"param_groups": state["param_groups"]}


def _nested_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[str, dict[str, Tensor]] = defaultdict(dict)
    for flat, value in tensors.items():
        name, key = flat.rsplit("/", 1)
        state[name][key] = value
    return {"state": dict(state), "param_groups": meta["param_groups"]}


def _trainer_state(step: int, config: TrainConfig, sched, **extra) -> str:
    return json.dumps({"step": step, "config": dataclasses.asdict(config),
                       "scheduler": sched.state_dict(), **extra}, indent=1) + "\n"


@dataclass
class PendingSave:
    """A sharded checkpoint being written in the background (``dcp.async_save``): its
    shards go to ``tmp``, renamed to ``folder`` by :meth:`finish` once every rank's are
    written."""

    written: Any  # the Future that completes when this rank's part is on disk
    tmp: Path
    folder: Path

    def finish(self, out: Path, config: TrainConfig, ctx: Context) -> None:
        """Wait for every rank's shards, then publish (every rank calls it)."""
        getattr(self.written, "upload_completion", self.written).result()
        dist.barrier()
        if ctx.main:
            publish(self.tmp, self.folder)
        _point_to(out, self.folder, config, ctx)


def _point_to(out: Path, folder: Path, config: TrainConfig, ctx: Context) -> None:
    """``checkpoints/last`` := folder (one rename), then only the ``keep`` newest stay."""
    if ctx.main:
        write_text_atomic(out / "checkpoints" / "last", folder.name + "\n")
        if config.keep is not None:
            for old in checkpoint_folders(out)[config.keep:]:
                shutil.rmtree(old)
    if ctx.world > 1:
        dist.barrier()  # no rank resumes training (or reads "last") before it is written


def save_training_state(out: Path, step: int, model: Mirasol, wrapped: nn.Module,
                        opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                        config: TrainConfig, ctx: Context,
                        group: dist.ProcessGroup | None = None) -> PendingSave | None:
    """Write ``checkpoints/step-…``, whole or not at all, point ``checkpoints/last`` at it
    in one rename, and drop the checkpoints past the ``keep`` newest. Every rank takes
    part. One process or DDP: rank 0 writes the full state (:func:`atomic_directory`).
    FSDP2: each rank writes its own shards with ``torch.distributed.checkpoint`` into one
    temporary folder (no rank holds the full state), asynchronously: the state is copied to
    host memory here and written in the background over ``group`` (a process group of
    its own, beside training's collectives); the returned :class:`PendingSave` publishes
    it once finished (the caller finishes it before the next save and at the end)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    folder = out / "checkpoints" / f"step-{step:07d}"
    if config.fsdp and ctx.world > 1:
        import torch.distributed.checkpoint as dcp

        model_state, optim_state = get_state_dict(wrapped, opt)
        tmp = folder.parent / f".{folder.name}.tmp-sharded"  # one name every rank knows
        if ctx.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            model.config.save(tmp / CONFIG)
            (tmp / TRAINER).write_text(_trainer_state(step, config, sched))
        dist.barrier()
        written = dcp.async_save({"model": model_state, "optim": optim_state},
                                 checkpoint_id=tmp / SHARDS, process_group=group)
        return PendingSave(written, tmp, folder)
    model_state, optim_state = get_state_dict(
        wrapped, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.main:
        with atomic_directory(folder) as tmp:
            write_checkpoint(model, tmp, metadata={"step": str(step)}, state_dict=model_state)
            tensors, meta = _flat_optimizer(optim_state)
            save_file(tensors, tmp / OPTIMIZER)
            (tmp / TRAINER).write_text(_trainer_state(step, config, sched, **meta))
    _point_to(out, folder, config, ctx)
    return None


def checkpoint_folders(out: str | Path) -> list[Path]:
    """The run's checkpoints, newest first (hidden temporary folders are not ones)."""
    return sorted(Path(out).glob("checkpoints/step-*"), reverse=True)


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint ``checkpoints/last`` names, else the newest one, else None."""
    last = Path(out) / "checkpoints" / "last"
    named = last.parent / last.read_text().strip() if last.is_file() else None
    if named is not None and named.is_dir():
        return named
    folders = checkpoint_folders(out)
    return folders[0] if folders else None


def _load_shards(folder: Path, state: dict) -> dict:
    """``state`` filled in place from ``folder/shards`` (``torch.distributed.checkpoint``
    reshards the saved tensors to ``state``'s layout) and returned; an unreadable one
    raises :class:`CheckpointError`."""
    import torch.distributed.checkpoint as dcp

    # DCP reports a failed read as its CheckpointException, a BaseException (not Exception).
    try:
        dcp.load(state, checkpoint_id=folder / SHARDS)
    except (Exception, dcp.CheckpointException) as e:  # noqa: BLE001
        raise CheckpointError(folder / SHARDS, f"not a readable sharded checkpoint "
                                               f"({type(e).__name__}: {e})") from e
    return state


def load_training_state(folder: Path, wrapped: nn.Module, opt: torch.optim.Optimizer,
                        sched: torch.optim.lr_scheduler.LRScheduler) -> int:
    """Restore weights, optimizer and schedule; returns the step to continue from. Either
    format serves any world size: a full checkpoint is read whole by every rank, a sharded
    one (FSDP2) is resharded by ``torch.distributed.checkpoint`` to this run's layout (one
    process included). A missing or damaged file raises :class:`CheckpointError` naming
    it. A full checkpoint is read whole before anything is restored, so the model and
    optimizer are then untouched; a sharded one is read by ``dcp.load`` into tensors that
    share the live parameters' storage, so a shard that fails part-way may leave them
    partly loaded (the resume then loads an earlier checkpoint over them, or starts from
    step 0 with them if none is readable)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                         set_state_dict)

    trainer = read_json(folder / TRAINER)
    try:
        step, scheduler = trainer["step"], trainer["scheduler"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(folder / TRAINER, f"not a trainer state ({e!r})") from e
    if (folder / SHARDS).is_dir():
        model_state, optim_state = get_state_dict(wrapped, opt)  # this run's layout
        state = _load_shards(folder, {"model": model_state, "optim": optim_state})
        set_state_dict(wrapped, opt, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
    else:
        optimizer_tensors = read_tensors(folder / OPTIMIZER)
        try:
            optim_state = _nested_optimizer(optimizer_tensors, trainer)
        except (KeyError, ValueError) as e:
            raise CheckpointError(folder / TRAINER, f"not a trainer state ({e!r})") from e
        set_state_dict(wrapped, opt, model_state_dict=read_tensors(folder / WEIGHTS),
                       optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
    sched.load_state_dict(scheduler)
    return step


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """A whole checkpoint (``model.safetensors`` + ``config.json``, for
    :func:`load_checkpoint`) from ``checkpoint``: a run folder (its last checkpoint) or a
    checkpoint, sharded (FSDP2) or not. Runs in one process."""
    folder = Path(checkpoint)
    folder = latest_checkpoint(folder) or folder
    model = Mirasol(load_config(folder))
    if (folder / SHARDS).is_dir():
        model.load_state_dict(_load_shards(folder, {"model": model.state_dict()})["model"])
    else:
        load_state(model, folder)
    return save_checkpoint(model, out, metadata={"exported_from": str(folder)})


def resume(out: Path, wrapped: nn.Module, opt: torch.optim.Optimizer,
           sched: torch.optim.lr_scheduler.LRScheduler) -> int:
    """Restore the newest checkpoint that loads, ``last``'s first; a damaged one is skipped
    with a warning naming it. Returns the step to continue from (0: nothing to resume)."""
    latest = latest_checkpoint(out)
    candidates = [latest] + [f for f in checkpoint_folders(out) if f != latest] if latest else []
    for folder in candidates:
        try:
            return load_training_state(folder, wrapped, opt, sched)
        except CheckpointError as e:
            warnings.warn(f"skipping damaged checkpoint {folder}: {e}", stacklevel=2)
    return 0


def _keep_logged_steps(path: Path, upto: int) -> None:
    """metrics.jsonl as of step ``upto``: the records of later steps (run again after a
    resume) and a line cut short by a kill are dropped, so each step is logged once."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= upto:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


# -- the loop ---------------------------------------------------------------------------


class _Log:
    """metrics.jsonl and the progress bar, on rank 0 only."""

    def __init__(self, out: Path, ctx: Context, total: int, start: int, show: bool):
        self.main = ctx.main
        self.file = open(out / "metrics.jsonl", "a") if self.main else None
        self.bar = None
        if self.main and show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=out.name, unit="step",
                            dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.main:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def step(self, postfix: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update()

    def close(self) -> None:
        if self.main:
            self.file.close()
            if self.bar is not None:
                self.bar.close()


def train(config: TrainConfig) -> Mirasol:
    """Run (or resume) ``config``; returns the trained model (sharded under FSDP: load the
    last checkpoint for a whole copy)."""
    if config.ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {config.ablation!r}")
    if config.keep is not None and config.keep < 1:
        raise ValueError(f"keep must be >= 1 (the checkpoint a resume starts from), got "
                         f"{config.keep}")
    if config.fsdp and config.eval_every:
        raise ValueError("eval_every is not supported with fsdp (sharded parameters are "
                         "gathered only inside the model's forward); evaluate the "
                         "checkpoints with `mirasol eval`")
    ctx = init_distributed()
    data_rank, data_world, context_group = context_mesh(ctx, config.context_parallel)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model_config = config.model_config()
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = Mirasol(model_config, backend=config.backend).to(ctx.device)
    model.context_parallel(context_group)
    wrapped = wrap(model, ctx, config.fsdp)
    opt = optimizer(wrapped, config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factors(config))
    start = resume(out, wrapped, opt, sched) if config.resume else 0
    if ctx.main:
        if start == 0:
            model_config.save(out / "config.json")
        _keep_logged_steps(out / "metrics.jsonl", start)
    data = dataset(config, model_config, "train", config.steps * config.batch_size)
    batches = _batches(data, [step_indices(s, config.batch_size, data_rank, data_world)
                              for s in range(start, config.stop_at or config.steps)],
                       config.num_workers)
    autocast = _autocast(ctx.device, config.dtype)
    log = _Log(out, ctx, config.steps, start, config.progress)
    # Sharded checkpoints are written in the background over a group of their own.
    checkpoint_group = dist.new_group(backend="gloo") if config.fsdp and ctx.world > 1 else None
    pending: PendingSave | None = None
    wrapped.train()
    tick = time.perf_counter()
    for step, batch in enumerate(batches, start):
        batch = _to(ablate(batch, config.ablation), ctx.device)
        with autocast:
            result = wrapped(batch["video"], batch["audio"], batch["text"],
                             answer_mask=batch["answer_mask"],
                             text_lengths=batch["text_lengths"],
                             first_chunk=time_offset(config, step))
        result.loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(wrapped.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            now = time.perf_counter()
            losses = torch.stack([result.loss, result.lm_loss, result.latent_loss]).detach()
            if ctx.world > 1:  # each rank holds its shard's means: average to the global batch's
                dist.all_reduce(losses)  # (a context group's ranks hold the same)
                losses /= ctx.world
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
                grad_norm = grad_norm.full_tensor()
            loss, lm, latent = losses.tolist()
            record = {"step": done, "loss": loss, "lm_loss": lm, "latent_loss": latent,
                      "grad_norm": float(grad_norm), "lr": sched.get_last_lr()[0],
                      "examples_per_s": config.batch_size * config.log_every / (now - tick)}
            tick = now
            log.write(record)
        log.step({"loss": f"{result.loss.item():.3f}"})  # this rank's shard
        if config.eval_every and done % config.eval_every == 0:
            # Every rank evaluates the same split (no collectives), rank 0 logs it. Before
            # the step's checkpoint: a run killed during it resumes from the one before and
            # evaluates again, where one resumed from this step's would skip it.
            model.context_parallel(None)
            metrics = evaluate(model, dataset(config, model_config, "val", config.eval_size),
                               ablation=config.ablation, device=ctx.device)
            model.context_parallel(context_group)
            log.write({"step": done, "split": "val", **metrics})
            wrapped.train()
        if config.checkpoint_every and (done % config.checkpoint_every == 0
                                        or done in (config.steps, config.stop_at)):
            if pending is not None:
                pending.finish(out, config, ctx)
            pending = save_training_state(out, done, model, wrapped, opt, sched, config, ctx,
                                          checkpoint_group)
    if pending is not None:
        pending.finish(out, config, ctx)
    log.close()
    if ctx.world > 1:
        dist.barrier()
    return model


# -- evaluation -------------------------------------------------------------------------


def _answer_logprob(model: Mirasol, latents: Tensor, questions: list[str],
                    answers: list[str]) -> Tensor:
    """Sum of log p(answer tokens + EOS | question, latents) per (question, answer) pair."""
    ids, masks = zip(*(TOKENIZER.example(q, a) for q, a in zip(questions, answers)))
    text, lengths, mask = TOKENIZER.pad(list(ids), list(masks))
    text, mask = text.to(latents.device), mask.to(latents.device)
    logp = model.text_logits(text, latents).float().log_softmax(-1)[:, :-1]
    token = logp.gather(-1, text[:, 1:, None])[..., 0]
    return (token * mask[:, 1:]).sum(1)


def time_offset(config: TrainConfig, step: int) -> int:
    """The first chunk index of step ``step``'s clips: uniform in [0, time_offsets), the
    same on every rank and after a resume (a function of the seed and the step)."""
    if config.time_offsets <= 1:
        return 0
    rng = np.random.default_rng(np.random.SeedSequence((config.seed, step)))
    return int(rng.integers(config.time_offsets))


@torch.no_grad()
def evaluate(model: Mirasol, data, *, ablation: str = "full", batch_size: int = 64,
             device: torch.device | str = "cpu",
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Accuracy and exact match on ``data``, overall and per question kind.

    accuracy: the candidate answer with the highest likelihood is the right one (closed
    set: every answer of that kind in ``data``). exact_match: greedy generation, decoded,
    equals the answer (open ended)."""
    model.eval()
    examples = [data[i] for i in range(len(data))]
    candidates: dict[str, list[str]] = defaultdict(list)
    for e in examples:
        if e.answer not in candidates[e.kind]:
            candidates[e.kind].append(e.answer)
    hits: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for first in range(0, len(examples), batch_size):
        chunk = examples[first:first + batch_size]
        batch = _to(ablate(collate(chunk, TOKENIZER), ablation), device)
        _, latents = model.encode(batch["video"], batch["audio"])
        best = likeliest_answers(model, latents, [e.question for e in chunk],
                                 [candidates[e.kind] for e in chunk])
        generated = model.generate(prompt=batch["prompt"], prompt_lengths=batch["prompt_lengths"],
                                   latents=latents, eos_token_id=TOKENIZER.EOS,
                                   pad_token_id=TOKENIZER.PAD,
                                   max_new_tokens=max(len(a.encode()) for e in chunk
                                                      for a in candidates[e.kind]) + 1)
        for i, e in enumerate(chunk):
            said = TOKENIZER.decode(generated[i]).strip()
            hits[e.kind].append((best[i] == e.answer, said == e.answer))
        if progress:
            progress(len(chunk))
    everything = [h for kind in hits.values() for h in kind]
    return {**score(everything), "by_kind": {k: score(h) for k, h in sorted(hits.items())}}


def likeliest_answers(model: Mirasol, latents: Tensor, questions: list[str],
                      candidates: list[Sequence[str]]) -> list[str]:
    """The closed-set answer of each clip: of ``candidates[i]``, the answer most likely
    given ``questions[i]`` and clip i's ``latents`` (B, T, m, dim)."""
    pairs = [(i, a) for i, options in enumerate(candidates) for a in options]
    rows = torch.tensor([i for i, _ in pairs], device=latents.device)
    scores = _answer_logprob(model, latents[rows], [questions[i] for i, _ in pairs],
                             [a for _, a in pairs]).tolist()
    best: dict[int, tuple[float, str]] = {}
    for (i, a), s in zip(pairs, scores):
        if i not in best or s > best[i][0]:
            best[i] = (s, a)
    return [best[i][1] for i in range(len(candidates))]


def score(hits: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """accuracy (closed set) and exact_match (greedy) of (closed-set right, greedy right)
    pairs, and their count."""
    return {"accuracy": sum(a for a, _ in hits) / len(hits),
            "exact_match": sum(m for _, m in hits) / len(hits), "count": len(hits)}


@dataclass
class EvalConfig:
    """What ``mirasol eval`` evaluates (every field is one of its arguments)."""

    checkpoint: str = option(help="a checkpoint folder (model.safetensors + config.json), "
                                  "e.g. a run's checkpoints/step-...")
    split: str = option("test", choices=SPLITS, help="the split of the training data")
    size: int = option(512, help="examples evaluated")
    ablation: str | None = option(None, choices=ABLATIONS,
                                  help="the modalities kept, instead of the run's")
    data: str | None = option(None, help="a manifest instead of the run's data")
    device: str = option("cpu", help="torch device")
    out: str | None = option(None, help="also write the result as JSON to this path")


def evaluate_checkpoint(config: EvalConfig) -> dict[str, Any]:
    """Evaluate ``config.checkpoint`` (a run's ``checkpoints/step-…`` or any
    :func:`save_checkpoint` output) on a split of its training data; the result is also
    written to ``config.out`` when given."""
    folder = Path(config.checkpoint)
    model = load_checkpoint(folder, device=config.device)
    trainer = folder / "trainer.json"
    run = (TrainConfig(**json.loads(trainer.read_text())["config"]) if trainer.exists()
           else TrainConfig())
    if config.data is not None:
        run = dataclasses.replace(run, data=config.data, val_data=config.data)
    result = evaluate(model, dataset(run, model.config, config.split, config.size),
                      ablation=run.ablation if config.ablation is None else config.ablation,
                      device=config.device)
    if config.out:
        Path(config.out).write_text(json.dumps(result, indent=2) + "\n")
    return result
