"""Per-rank peak memory, predicted before the queue: what each term is and how the engines hold it.

The model's own figures come from a trace on the meta device in a child process (torch is never
imported here): launcher/runtime/memory_probe.py. It gives P parameters, T trainable, the largest
trainable tensor L, the tensors' sizes in order, and, per micro-batch size m, the activations
beside the gradients A(m), activations and gradients together J(m), and the batch's bytes.
Everything else is arithmetic, per rank, for world size N and k optimizer states per element (2
for AdamW, 1 for SGD with momentum), in three phases on top of what lasts through the step:
backward, gradient reduction, optimizer step. The peak is the lasting terms plus the largest
phase. Weights are w bytes (2 for DeepSpeed's bf16/fp16, which casts them; else 4).

  Accelerate DDP   lasting: P·4 weights, T·4 DDP buckets (gradient_as_bucket_view is off), k·T·4
                   states; gradients T·4 (lasting with accumulation, else they grow inside J(m));
                   step: AdamW's temporaries, 3·L·4 (one tensor at a time: a square root and a
                   quotient while the previous tensor's denominator is alive).
  Accelerate FSDP  weights, gradients and states /N; two gathered blocks in the backward. On ranks
                   without a GPU Accelerate runs DDP instead (its CPU path ignores the FSDP plugin),
                   and that is what is estimated.
  ZeRO 0           as DDP with one flat all-reduce buffer (T·w) instead of buckets.
  ZeRO 1, 2        the flat weights P·w, gradients accumulated whole T·w, a reduce bucket
                   (reduce_bucket_size·w, x2 with overlap_comm on GPUs; 2 GB in fp32 at the
                   default 5e8, whatever the model), the fp32 partition and states (1+k)·T·4/N;
                   backward: J(m) (DeepSpeed adds a micro-step's gradients after its backward);
                   reduction: the whole tensors that overlap the partition (x2 for stage 2 on more
                   than one rank), the new gradients in flight, one flattened bucket; step: the
                   fp32 gradient partition and AdamW's two partition-sized temporaries.
  ZeRO 3           weights and gradients /N too; backward: the gathered parameters (the prefetch
                   bucket, or the running and the next tensor), one gradient with the reduce bucket
                   being reduced, A(m).
  Offload          the fp32 partition, states, gradient partition and the update move to host
                   memory (offload_param: the weight partition too). On ranks without a GPU host
                   memory is the device: those terms count in the peak.

Against the anchors' formulas: DeepSpeed's estimate_zero2_model_states_mem_needs gives 2·P +
18·P/N for fp16 without offload; the model states here are the same per element (16-bit weights,
fp32 partition and two states), but the gradients are whole (2·P more: DeepSpeed 0.19 accumulates
them per tensor and partitions at the boundary, as the measurement shows) and the reduce bucket,
the reduction's buffers and the activations, which its estimator leaves out, are added. Its
ZeRO-3 estimate (4·largest layer + 18·P/N) keeps the gathered layer; here the gathered
parameters follow the prefetch bucket. `accelerate estimate-memory` multiplies the weights (x4
for Adam training, no activations): the DDP terms above without the buckets and activations.

These come from DeepSpeed 0.19's and torch's code and were checked against the bytes a real run
holds (bench/memory.py; bench/results/memory-cpu-*.jsonl has every case with its error). On a GPU
the CUDA context and NCCL's buffers (FIXED_GPU_BYTES) and the caching allocator's headroom
(GPU_HEADROOM of the rest) are added; neither on ranks without one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

from launcher.plan.cache import cache_root, remember

PROBE = "launcher.runtime.memory_probe"  # run as `python -m`, never imported here
GiB = 1024**3
FIXED_GPU_BYTES = int(0.75 * GiB)  # CUDA context ~0.5 GiB + NCCL communicator buffers
GPU_HEADROOM = 0.10  # fragmentation of the caching allocator, as a share of the predicted bytes
# A node's host memory beyond the ranks' tensors, fitted by bench/host_memory.py from real jobs'
# process trees on torch 2.14.1, CPU (bench/results/host-memory-cpu-*.jsonl has the cases): each
# process's own pages summed, and the pages they share (torch's libraries, what a forked rank
# shares with the agent) once. The MLP at 1, 2 and 4 ranks held 1024, 1136 and 1367 MiB: 910 MiB
# once a node and 114 MiB a rank; GPT small with two loader workers a rank held 14 MiB more than
# without (4 MiB a worker beside the batches it prefetches); the MLP on ZeRO-2 held 173 MiB more
# than on DDP at 2 ranks (DeepSpeed's modules and its CPU Adam op: 86 MiB a rank).
AGENT_HOST_BYTES = 910 * 1024**2  # the launcher, torchrun's agent (which imports torch), shared libraries
RANK_HOST_BYTES = 114 * 1024**2  # a rank's own pages beside its tensors, for the MLP module
DEEPSPEED_RANK_BYTES = 86 * 1024**2  # what importing DeepSpeed and its CPU ops adds to a rank
WORKER_HOST_BYTES = 4 * 1024**2  # a forked loader worker's own pages, beside its prefetched batches
MLP_PROBE_BYTES = 361 * 1024**2  # the MLP's trace child's anonymous memory, against which others add

# Device memory of known accelerators (bytes the driver reports, rounded down to the GiB). Keys
# are lowercase names as Slurm's gres types and nvidia-smi spell them.
ACCELERATORS = {
    "h200": 141, "h100": 80, "h100-80gb": 80, "h100-94gb": 94, "h800": 80, "gh200": 96,
    "a100": 80, "a100-80gb": 80, "a100-40gb": 40, "a100-sxm4-40gb": 40, "a800": 80,
    "l40s": 48, "l40": 48, "a6000": 48, "a40": 48, "a10": 24, "a10g": 24, "l4": 24,
    "v100": 32, "v100-32gb": 32, "v100-16gb": 16, "t4": 16, "rtx4090": 24, "rtx3090": 24,
    "mi300x": 192, "mi250x": 64, "mi250": 64, "mi210": 64, "b200": 180, "gb200": 186,
}


@dataclass(frozen=True)
class Model:
    """The probe's figures: element counts, and bytes by micro-batch size (traced at a few)."""

    params: int
    trainable: int
    param_bytes: int
    buffer_bytes: int
    largest_trainable: int
    largest_block_bytes: int
    activations: dict[int, int]  # beside the gradients written so far
    with_gradients: dict[int, int]  # activations and gradients together
    batch_bytes: dict[int, int]
    activations_checkpointed: dict[int, int] = field(default_factory=dict)
    with_gradients_checkpointed: dict[int, int] = field(default_factory=dict)
    precision: str = "fp32"
    trainable_sizes: tuple[int, ...] = ()
    process_bytes: int = 0  # the trace child's own anonymous memory (interpreter, torch, libraries)
    cannot_train: dict[int, str] = field(default_factory=dict)  # micro-batch -> the model's own error

    def partition_overlap(self, world_size: int) -> int:
        """Elements of the whole tensors that overlap one rank's ZeRO partition, on the rank with
        the most: ZeRO 1-2 gather a partition's gradients as whole tensors."""
        sizes = self.trainable_sizes or (self.trainable,)
        share = -(-sum(sizes) // world_size)
        most, start = 0, 0
        ends = []
        for size in sizes:
            ends.append((start, start + size))
            start += size
        for rank in range(world_size):
            low, high = rank * share, (rank + 1) * share
            most = max(most, sum(b - a for a, b in ends if a < high and b > low))
        return most

    def at(self, table: dict[int, int], micro: int) -> int:
        """Linear in the micro-batch through the two traced sizes nearest to it."""
        sizes = sorted(table)
        if micro in table or len(sizes) == 1:
            return table.get(micro, table[sizes[0]] * micro // sizes[0])
        low, high = (sizes[0], sizes[1]) if micro < sizes[1] else (sizes[-2], sizes[-1])
        slope = (table[high] - table[low]) / (high - low)
        return max(0, int(table[low] + slope * (micro - low)))

    def can_checkpoint(self) -> bool:
        return bool(self.activations_checkpointed)


@dataclass(frozen=True)
class Setup:
    """The job's choices that change memory."""

    backend: str  # deepspeed | accelerate
    strategy: str  # ddp | fsdp (accelerate)
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    precision: str  # fp32 | bf16 | fp16, resolved
    optimizer_states: int  # k
    world_size: int
    micro: int
    activation_checkpointing: bool
    gpu: bool
    accumulation: int = 1
    # Temporaries of torch's unfused update, in tensors of the size it updates at once: AdamW a
    # square root and a quotient (and, one tensor at a time, the previous tensor's denominator:
    # 3); SGD with Nesterov momentum the look-ahead gradient (and the previous one's: 2).
    update_temporaries: int = 2
    reduce_bucket: int = int(5e8)  # elements
    prefetch_bucket: int = int(5e7)


LASTING, BACKWARD, REDUCTION, STEP = "lasting", "backward", "gradient reduction", "optimizer step"


@dataclass(frozen=True)
class Term:
    what: str
    bytes: int
    phase: str = LASTING  # lasting: through the whole step; else only in that phase
    host: bool = False  # offloaded to host memory (the same memory on a rank without a GPU)

    @property
    def label(self) -> str:
        return self.what if self.phase == LASTING else f"{self.what} [{self.phase}]"


@dataclass(frozen=True)
class Estimate:
    terms: tuple[Term, ...]
    peak: int  # bytes per rank on its device (on a rank without a GPU: in host memory, all terms)
    phase: str  # when the peak is reached: backward or optimizer step
    host_peak: int  # bytes per rank in host memory beside the device (GPU ranks with offload)
    note: str = ""


def estimate(model: Model, setup: Setup) -> Estimate:
    """Per rank: what lives through the step, plus the larger of what the backward and the
    optimizer step add. On a GPU, offloaded terms count in host memory; without one, everything
    is host memory and counts together."""
    terms, note = _terms(model, setup)
    if not setup.gpu:
        terms = [dataclasses.replace(term, host=False) for term in terms]
    device = [term for term in terms if not term.host]
    peak, phase = _peak(device)
    host_peak, _ = _peak([term for term in terms if term.host])
    if setup.gpu:
        headroom = int(peak * GPU_HEADROOM)
        terms += [Term("CUDA context and NCCL", FIXED_GPU_BYTES), Term("allocator headroom", headroom)]
        peak += FIXED_GPU_BYTES + headroom
    return Estimate(tuple(terms), peak, phase, host_peak, note)


def _peak(terms: list[Term]) -> tuple[int, str]:
    lasting = sum(t.bytes for t in terms if t.phase == LASTING)
    phases = {phase: sum(t.bytes for t in terms if t.phase == phase) for phase in (BACKWARD, REDUCTION, STEP)}
    phase = max(phases, key=lambda name: phases[name])
    return lasting + phases[phase], phase


@dataclass(frozen=True)
class _Sizes:
    """What every engine's terms are made of, for one setup."""

    n: int  # world size
    k: int  # optimizer states per element
    t: int  # trainable elements
    p: int  # parameter elements
    largest: int  # the largest trainable tensor's elements
    w: int  # bytes of a weight as the engine keeps it
    beside: int  # activations beside the gradients written so far
    joint: int  # activations and gradients together
    suffix: str  # " (checkpointed)" or ""

    temporaries: int  # of the unfused update, partition-sized (flat) or +1 tensor by tensor


def _terms(model: Model, setup: Setup) -> tuple[list[Term], str]:
    checkpointed = setup.activation_checkpointing and model.can_checkpoint()
    sizes = _Sizes(
        n=setup.world_size, k=setup.optimizer_states, t=model.trainable, p=model.params,
        largest=model.largest_trainable,
        w=2 if setup.precision in ("bf16", "fp16") and setup.backend == "deepspeed" else 4,
        beside=model.at(model.activations_checkpointed if checkpointed else model.activations, setup.micro),
        joint=model.at(model.with_gradients_checkpointed if checkpointed else model.with_gradients, setup.micro),
        suffix=" (checkpointed)" if checkpointed else "", temporaries=setup.update_temporaries)
    # All of a step's micro-batches are fetched before its first forward.
    terms = [Term("the step's micro-batches", setup.accumulation * model.at(model.batch_bytes, setup.micro)),
             Term("buffers", model.buffer_bytes)]
    if setup.backend == "accelerate":
        return terms + _accelerate(model, setup, sizes), (
            "strategy fsdp runs as DDP on ranks without a GPU (Accelerate's CPU path ignores the plugin)"
            if setup.strategy == "fsdp" and not setup.gpu else "")
    if setup.zero_stage == 0:
        return terms + _zero0(setup, sizes), ""
    return terms + _zero_partitions(setup, sizes) + (
        _zero3(model, setup, sizes) if setup.zero_stage == 3 else _zero12(model, setup, sizes)), ""


def _accelerate(model: Model, setup: Setup, z: _Sizes) -> list[Term]:
    n, k, t, p = z.n, z.k, z.t, z.p
    if setup.strategy == "fsdp" and setup.gpu:
        return [Term("parameters (sharded)", p * 4 // n), Term("gradients (sharded)", t * 4 // n),
                Term("optimizer states (sharded)", k * t * 4 // n),
                Term("gathered blocks", 2 * model.largest_block_bytes, BACKWARD),
                Term("activations" + z.suffix, z.beside, BACKWARD)]
    # The optimizer is fused on a GPU; on a CPU torch's default AdamW works tensor by tensor.
    return [Term("parameters", p * 4), Term("DDP buckets", t * 4), Term("optimizer states", k * t * 4),
            Term("optimizer step temporaries", _per_tensor(z) * z.largest * 4 if not setup.gpu else 0, STEP),
            *_whole_gradients(t * 4, setup.accumulation, z.beside, z.joint, z.suffix)]


def _per_tensor(z: _Sizes) -> int:
    """Tensor by tensor, the previous tensor's temporary is still alive while the next is made."""
    return z.temporaries + 1 if z.temporaries else 0


def _zero0(setup: Setup, z: _Sizes) -> list[Term]:
    t, w = z.t, z.w
    terms = [Term("parameters", z.p * w), Term("optimizer states", z.k * t * 4),
             Term("all-reduce buffer, then the update's temporaries",
                  max(t * w, _per_tensor(z) * z.largest * 4), STEP)]
    if w == 2:
        terms.append(Term("fp32 master weights", t * 4))
    return terms + _whole_gradients(t * w, setup.accumulation, z.beside, z.joint, z.suffix)


def _zero_partitions(setup: Setup, z: _Sizes) -> list[Term]:
    """What stages 1-3 share: the reduce bucket and the fp32 partition with its states."""
    n, t, offload = z.n, z.t, setup.offload_optimizer
    buckets = 2 if setup.gpu else 1  # overlap_comm (on with GPUs) double-buffers the reduce bucket
    # The update runs over one flat partition: torch's default AdamW makes a square root and a
    # quotient of its size. Fused (one kernel, no temporaries) on a GPU and under offload
    # (backends/deepspeed_backend.py: fused_optimizer_fits).
    fused = setup.gpu or offload
    return [Term("reduce bucket", buckets * setup.reduce_bucket * z.w),
            Term("fp32 partition", t * 4 // n, host=offload),
            Term("optimizer states (partition)", z.k * t * 4 // n, host=offload),
            # Offloaded, the fp32 gradients are kept in host memory from the first boundary on.
            Term("fp32 gradient partition", t * 4 // n, LASTING if offload else STEP, host=offload),
            Term("optimizer step temporaries", 0 if fused else z.temporaries * t * 4 // n, STEP, host=offload)]


def _zero3(model: Model, setup: Setup, z: _Sizes) -> list[Term]:
    """Parameters are gathered one at a time (the running one and the prefetched next), or a
    prefetch bucket's worth (nothing to gather on one rank); each new gradient (one is in the
    traced activations) is flattened with the reduce bucket's; offloaded, each gradient is copied
    once more for its norm."""
    n, w, largest = z.n, z.w, z.largest
    gathered = min(z.p, max(setup.prefetch_bucket, 2 * largest)) * w if n > 1 else 0
    return [Term("parameters (partition)", z.p * w // n, host=setup.offload_params),
            Term("gradients (partition)", z.t * w // n),
            Term("gathered parameters", gathered, BACKWARD),
            Term("gradients being reduced", min(z.t, largest + setup.reduce_bucket) * w, BACKWARD),
            Term("a gradient's copy for its norm", largest * 4 if setup.offload_optimizer else 0, BACKWARD),
            Term("activations" + z.suffix, z.beside, BACKWARD)]


def _zero12(model: Model, setup: Setup, z: _Sizes) -> list[Term]:
    """Stages 1 and 2 (DeepSpeed 0.19): gradients accumulate whole. With accumulation, the
    earlier micro-steps' gradients wait in .grad (stage 2 on more than one rank keeps only the
    partition's) and the new ones add into them one tensor at a time (that tensor is in the
    traced activations). At the last micro-step the partition's gradients are gathered as whole
    tensors (the ones overlapping it; stage 2 on more than one rank stages them twice), with the
    new gradients still alive (stage 1 reduces after the backward; stage 2 as they come: the two
    in flight, as measured) and one flattened bucket; one such buffer stays for the update."""
    n, t, w, stage = z.n, z.t, z.w, setup.zero_stage
    several = stage == 2 and n > 1
    in_partition = model.partition_overlap(n) * 4
    if setup.accumulation > 1:
        in_backward = [Term("the earlier micro-steps' gradients", t * w // n if several else t * w, BACKWARD),
                       Term("activations" + z.suffix, z.beside, BACKWARD)]
    else:
        in_backward = [Term("new gradients and activations" + z.suffix, z.joint, BACKWARD)]
    return [Term("parameters", z.p * w), Term("gradients (accumulated)", t * w), *in_backward,
            Term("gradients in the partition", (2 if several else 1) * in_partition, REDUCTION),
            Term("new gradients", (t if stage == 1 else min(t, 2 * z.largest)) * w, REDUCTION),
            Term("a flattened reduce bucket", min(t, max(setup.reduce_bucket, z.largest)) * w, REDUCTION),
            Term("gradients in the partition", in_partition, STEP)]


def _whole_gradients(size: int, accumulation: int, beside: int, joint: int, suffix: str) -> list[Term]:
    """Gradients kept whole until the update: in the backward of a step's only micro-batch they
    grow beside the activations (traced together); with accumulation, the earlier micro-batches'
    gradients are all there while the last one's activations live."""
    if accumulation == 1:
        return [Term("gradients", size, STEP), Term("activations and gradients" + suffix, joint, BACKWARD)]
    return [Term("gradients", size), Term("activations" + suffix, beside, BACKWARD)]


def parse_size(text: str) -> int:
    """`80GiB`, `80G`, `80GB` (all binary, as GPU memory is quoted) or `512MiB` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size; write it like 80GiB, 24G or 512MiB")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024**power)


def host_per_node(model: Model, result: Estimate, setup: Setup, nproc: int, workers: int) -> list[Term]:
    """A node's host memory: the processes (fitted figures above; a recipe module whose libraries
    hold more than the MLP's, as its trace child measures, adds the difference to each rank), the
    ranks' tensors where they have no GPU, what they offload, and their loaders' worker
    processes. Preprocessing caches are memory-mapped: page cache, shared by the node's ranks and
    given back under pressure; not counted."""
    libraries = max(0, model.process_bytes - MLP_PROBE_BYTES) if model.process_bytes else 0
    libraries += DEEPSPEED_RANK_BYTES if setup.backend == "deepspeed" else 0
    terms = [Term("the launcher and torchrun's agent", AGENT_HOST_BYTES),
             Term(f"{nproc} rank processes (interpreter, torch, libraries)", nproc * (RANK_HOST_BYTES + libraries))]
    if not setup.gpu:
        terms.append(Term(f"{nproc} ranks' tensors (the device is host memory)", nproc * result.peak))
    elif result.host_peak:
        terms.append(Term(f"{nproc} ranks' offloaded states", nproc * result.host_peak))
    if workers:  # each prefetches two batches (the DataLoader's default prefetch_factor)
        batches = 2 * model.at(model.batch_bytes, setup.micro)
        terms.append(Term(f"{nproc * workers} data loader workers ({workers} a rank)",
                          nproc * workers * (WORKER_HOST_BYTES + batches)))
    return [dataclasses.replace(term, host=True) for term in terms]


def host_share(nproc: int) -> int:
    """Each rank's share of this machine's memory (MemTotal / processes per node)."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 // max(1, nproc)
    raise OSError("no MemTotal in /proc/meminfo")


def probe_model(path: str, overrides: tuple[str, ...], micros: list[int], checkpointed: bool,
                fingerprint: str = "") -> Model | str:
    """The recipe's model traced on the meta device in a child process; a sentence when it cannot
    be. With a fingerprint (what the figures depend on: fingerprint_of), a trace already made is
    read from $LAUNCHER_CACHE_DIR/memory-probe/ instead: the child's torch and transformers imports
    are most of its cost."""
    request = {"path": path, "overrides": list(overrides), "micro": sorted(set(micros)),
               "checkpointed_too": checkpointed}
    cached = _cache_file(request, fingerprint) if fingerprint else None
    try:
        figures = json.loads(cached.read_text(encoding="utf-8")) if cached else None
    except (OSError, ValueError):
        figures = None
    if figures is None:
        figures = _run_probe(request)
        if cached and "failed" not in figures:  # a module without a probe stays without one
            remember(cached, figures)
    if "failed" in figures or "unsupported" in figures:
        return figures.get("unsupported") or f"the trace failed: {figures['failed']}"

    def table(key: str) -> dict[int, int]:
        return {int(m): b for m, b in figures.get(key, {}).items()}

    return Model(params=figures["params"], trainable=figures["trainable"], param_bytes=figures["param_bytes"],
                 buffer_bytes=figures["buffer_bytes"], largest_trainable=figures["largest_trainable"],
                 largest_block_bytes=figures["largest_block_bytes"], activations=table("activations"),
                 with_gradients=table("with_gradients"), batch_bytes=table("batch_bytes"),
                 activations_checkpointed=table("activations_checkpointed"),
                 with_gradients_checkpointed=table("with_gradients_checkpointed"), precision=figures["precision"],
                 trainable_sizes=tuple(figures.get("trainable_sizes", ())),
                 process_bytes=figures.get("process_private_bytes", 0),
                 cannot_train={int(m): e for m, e in figures.get("cannot_train", {}).items()})


# What the trace reads of a recipe: the model, the data's shapes, the precision and activation
# checkpointing. The schedule, batch, backend, checkpoints, tracking and cluster are applied by the
# arithmetic above, so two runs that differ only there (a run directory, a step count, a backend)
# share one trace: that is what keeps the default check to one child per model in a test suite.
TRACED_FIELDS = ("recipe", "model", "data", "precision")


def fingerprint_of(loaded) -> str:
    """What a trace depends on beyond the micro-batch sizes: the traced fields of the resolved
    recipe, the recipe module's source, the probe's own, and the versions of torch and
    transformers."""
    import hashlib
    from importlib import metadata
    from pathlib import Path

    from launcher.config.load import recipe_to_dict

    resolved = recipe_to_dict(loaded.recipe)
    traced = {key: resolved.get(key) for key in TRACED_FIELDS}
    traced["activation_checkpointing"] = loaded.recipe.train.activation_checkpointing
    parts = [json.dumps(traced, sort_keys=True, default=str)]
    runtime = Path(__file__).resolve().parent.parent / "runtime"
    for source in (getattr(loaded.recipe_module, "__file__", None), runtime / "memory_probe.py",
                   runtime / "live_bytes.py"):
        try:
            parts.append(Path(source).read_text(encoding="utf-8") if source else "")
        except OSError:
            return ""  # no fingerprint, no cache: traced every time
    for package in ("torch", "transformers", "torchvision", "peft"):
        try:
            parts.append(f"{package}={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package}=none")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _cache_file(request: dict, fingerprint: str):
    import hashlib

    # Not the recipe's path or its overrides: the fingerprint holds what they resolve to.
    key = [request["micro"], request["checkpointed_too"], fingerprint]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_root() / "memory-probe" / f"{digest}.json"


def _run_probe(request: dict) -> dict:
    # Offline: a hub name that is not on disk makes no estimate rather than minutes of retries.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", PROBE], input=json.dumps(request), capture_output=True,
                          text=True, check=False, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"failed": (done.stderr or "no output")[-2000:]}
    return json.loads(lines[-1])


def setup_of(recipe, math, gpu: bool, micro: int | None = None, **changes) -> Setup:
    """The memory-relevant choices of a planned recipe (changes: fields to try instead)."""
    backend, optimizer = recipe.backend, recipe.optimizer
    ds = backend.deepspeed_config if isinstance(backend.deepspeed_config, dict) else {}
    zero = ds.get("zero_optimization", {}) if isinstance(ds.get("zero_optimization"), dict) else {}
    precision = recipe.precision if recipe.precision != "auto" else ("bf16" if gpu else "fp32")
    states = 2 if optimizer.name == "adamw" else (1 if optimizer.momentum else 0)
    temporaries = 2 if optimizer.name == "adamw" else (1 if optimizer.momentum and optimizer.nesterov else 0)
    values = dict(backend=backend.name, strategy=backend.strategy, zero_stage=backend.zero_stage,
                  offload_optimizer=backend.offload_optimizer, offload_params=backend.offload_params,
                  precision=precision, optimizer_states=states, update_temporaries=temporaries,
                  world_size=math.world_size,
                  micro=micro or math.micro, accumulation=math.accumulation,
                  activation_checkpointing=recipe.train.activation_checkpointing,
                  gpu=gpu, reduce_bucket=int(zero.get("reduce_bucket_size", 5e8)),
                  prefetch_bucket=int(zero.get("stage3_prefetch_bucket_size", 5e7)))
    values.update(changes)
    return Setup(**values)


def largest_fitting_micro(model: Model, setup: Setup, capacity: int, global_batch: int) -> int | None:
    """The largest micro-batch below the current one that fits and divides the global batch."""
    for micro in range(setup.micro - 1, 0, -1):
        if global_batch % (micro * setup.world_size):
            continue
        accumulation = global_batch // (micro * setup.world_size)
        if estimate(model, dataclasses.replace(setup, micro=micro, accumulation=accumulation)).peak <= capacity:
            return micro
    return None


def alternatives(model: Model, setup: Setup, capacity: int) -> list[str]:
    """Settings that make the current micro-batch fit, as overrides."""

    tries: list[tuple[str, dict]] = []
    if setup.backend == "deepspeed":
        tries += [(f"backend.zero_stage={s}", {"zero_stage": s}) for s in range(setup.zero_stage + 1, 4)]
        if not setup.offload_optimizer:
            tries.append(("backend.offload_optimizer=true", {"offload_optimizer": True,
                                                             "zero_stage": max(1, setup.zero_stage)}))
    if not setup.activation_checkpointing and model.can_checkpoint():
        tries.append(("train.activation_checkpointing=true", {"activation_checkpointing": True}))
    return [label for label, change in tries
            if estimate(model, dataclasses.replace(setup, **change)).peak <= capacity]


def render(result: Estimate, capacity: int, capacity_source: str, nproc: int = 1) -> list[str]:
    lines = ["# memory per rank (predicted peak; launcher/plan/memory.py says how each term is obtained)"]
    device = [term for term in result.terms if not term.host and term.bytes > 0]
    host = [term for term in result.terms if term.host and term.bytes > 0]
    width = max(len(term.label) for term in (*device, *host))
    lines += [f"  {term.label.ljust(width)}  {_gib(term.bytes)}" for term in device]
    lines.append(f"  {'peak'.ljust(width)}  {_gib(result.peak)} in the {result.phase}, of {_gib(capacity)} "
                 f"({capacity_source})")
    if host:
        lines.append("  in host memory (offloaded):")
        lines += [f"  {term.label.ljust(width)}  {_gib(term.bytes)}" for term in host]
        lines.append(f"  {'host peak'.ljust(width)}  {_gib(result.host_peak)} per rank, "
                     f"{_gib(result.host_peak * nproc)} per node of {nproc} processes")
    if result.note:
        lines.append(f"  note: {result.note}")
    return lines


def _gib(size: int) -> str:
    return f"{size / GiB:.2f} GiB" if size >= GiB // 10 else f"{size / 1024**2:.1f} MiB"


@dataclass
class Verdict:
    lines: list[str]
    data: dict
    fits: bool
    suggestion: str = ""


def device_size(gpu_type: str) -> int | None:
    """Bytes of a known accelerator (`a100-80gb`, `H100`), else None."""
    name = gpu_type.lower().removeprefix("nvidia-").removeprefix("nvidia ")
    size = ACCELERATORS.get(name)
    return None if size is None else size * GiB


def _capacity(device_memory: str | None, gpu: bool | None, gpu_types: tuple[str, ...], node_memory: int | None,
              nproc: int) -> tuple[int, str, bool] | None:
    """(bytes a rank may hold, where that figure comes from, whether the ranks have GPUs); None
    when they have GPUs of a size nobody says."""
    from launcher.plan.topology import count_local_gpus, local_gpu_memory

    here = gpu is None
    gpu = bool(count_local_gpus()) if gpu is None else gpu
    known = sorted((size, name) for name in gpu_types if (size := device_size(name)) is not None)
    if device_memory:
        return parse_size(device_memory), "--device-memory", gpu
    if gpu and known:
        return known[0][0], f"{known[0][1]}, the partition's GPU", gpu
    if gpu and here and (local := local_gpu_memory()):
        return local, "this machine's smallest GPU (nvidia-smi)", gpu
    if gpu:
        return None
    if node_memory:
        return node_memory // nproc, f"the partition's node memory / {nproc} processes", gpu
    return host_share(nproc), f"this machine's memory / {nproc} processes", gpu


def check(recipe_path: str, overrides: tuple[str, ...], loaded, launch_plan, device_memory: str | None,
          gpu: bool | None = None, gpu_types: tuple[str, ...] = (), node_memory: int | None = None) -> Verdict:
    """The estimate for a planned job against its device (or its share of host memory). `gpu`:
    whether its ranks have GPUs (default: this machine's, whose size nvidia-smi then gives);
    `gpu_types`: what Slurm says the partition has (the smallest known one counts); `node_memory`:
    a node's memory where the ranks run elsewhere (Slurm's figure for the partition), shared by
    the processes of a node when they have no GPU."""
    from launcher.secrets import split_secret_overrides

    recipe, math = loaded.recipe, launch_plan.math
    nproc = max(launch_plan.procs_by_node)
    here = gpu is None and node_memory is None  # the job runs on this machine
    found = _capacity(device_memory, gpu, gpu_types, node_memory, nproc)
    if found is None:
        return Verdict(["# memory per rank: not checked: give --device-memory (the GPU's size is not known here)"],
                       {"not_estimated": "no device size"}, True)
    capacity, source, gpu = found
    if not callable(getattr(loaded.recipe_module, "memory_probe", None)):  # no child to start for that
        reason = f"recipe module {recipe.recipe} defines no memory_probe(recipe)"
        return Verdict([f"# memory per rank: not estimated: {reason}"], {"not_estimated": reason}, True)
    # Traced at the job's own micro-batch and one other (BatchNorm cannot train on one sample):
    # the line through them gives the others. Checkpointed too only when it does not fit.
    micros = [2 if math.micro != 2 else 4, math.micro]
    fingerprint = fingerprint_of(loaded)
    # Secrets (cluster.env.HF_TOKEN=...) change no memory; kept out of the child and its errors.
    overrides = tuple(split_secret_overrides(overrides)[0])
    model = probe_model(recipe_path, overrides, micros, False, fingerprint)
    if isinstance(model, str):
        return Verdict([f"# memory per rank: not estimated: {model}"], {"not_estimated": model}, True)
    if math.micro in model.cannot_train:
        return _untrainable(model, math)
    setup = setup_of(recipe, math, gpu)
    result = estimate(model, setup)
    host = host_per_node(model, result, setup, nproc, int(getattr(recipe.data, "workers", 0) or 0))
    host_total = sum(term.bytes for term in host)
    node = node_memory or (host_share(1) if here else None)  # the ranks' node, where its size is known
    lines = render(result, capacity, source, nproc) + render_host(host, node)
    data = {"peak_bytes": result.peak, "peak_phase": result.phase, "capacity_bytes": capacity,
            "capacity_source": source, "host_peak_bytes": result.host_peak,
            "host_peak_bytes_per_node": result.host_peak * nproc, "fits": result.peak <= capacity,
            "terms": [{"what": t.what, "bytes": t.bytes, "phase": t.phase, "host": t.host}
                      for t in result.terms if t.bytes > 0],
            "host_bytes_per_node": host_total, "node_memory_bytes": node, "host_fits": not node or host_total <= node,
            "host_terms": [{"what": t.what, "bytes": t.bytes} for t in host if t.bytes > 0]}
    parts = []
    if not data["fits"]:
        if not recipe.train.activation_checkpointing:
            with_checkpointing = probe_model(recipe_path, overrides, micros, True, fingerprint)
            model = with_checkpointing if isinstance(with_checkpointing, Model) else model
        parts.append(_suggestion(model, setup, capacity, math, data))
    if not data["host_fits"]:
        parts.append("for host memory per node: fewer processes a node (--nproc), fewer data.workers, or less "
                     "offload")
    suggestion = "; ".join(parts)
    if suggestion:
        lines.append(f"  does not fit: {suggestion}")
    return Verdict(lines, data, not parts, suggestion)


def _untrainable(model: Model, math) -> Verdict:
    """The model's own refusal of this micro-batch size, seen in its trace while another size
    traced: the first step would fail the same way."""
    error = model.cannot_train[math.micro]
    works = [m for m in sorted(model.activations) if math.global_batch % (m * math.world_size) == 0]
    hint = (f"batch.micro={works[0]} (accumulation {math.global_batch // (works[0] * math.world_size)} keeps "
            f"batch.global {math.global_batch})" if works else
            f"a batch.micro the model trains at, e.g. {min(model.activations)}, with a batch.global it divides")
    lines = [f"# memory per rank: the model cannot train at batch.micro={math.micro}: {error}",
             f"  does not fit: {hint}"]
    return Verdict(lines, {"cannot_train": error, "micro": math.micro, "fits": False}, False, hint)


def _suggestion(model: Model, setup: Setup, capacity: int, math, data: dict) -> str:
    """What would fit the device: a smaller micro-batch with the accumulation that keeps the global
    batch, and settings that make the current one fit (also into data)."""
    micro = largest_fitting_micro(model, setup, capacity, math.global_batch)
    other = alternatives(model, setup, capacity)
    parts = []
    if micro:
        accumulation = math.global_batch // (micro * math.world_size)
        smaller = estimate(model, dataclasses.replace(setup, micro=micro, accumulation=accumulation))
        parts.append(f"batch.micro={micro} (accumulation {accumulation} keeps batch.global "
                     f"{math.global_batch}; predicted {_gib(smaller.peak)})")
    if other:
        parts.append(("or, " if parts else "") + f"at batch.micro {math.micro}: " + ", ".join(other))
    data.update({"suggested_micro": micro, "alternatives": other})
    return "; ".join(parts) or "no micro-batch, ZeRO stage, offload or checkpointing fits this device"


def render_host(terms: list[Term], node: int | None) -> list[str]:
    shown = [term for term in terms if term.bytes > 0]
    width = max((len(term.what) for term in shown), default=0)
    total = sum(term.bytes for term in shown)
    of = f" of {_gib(node)}" if node else ""
    return (["# host memory per node (preprocessing caches are memory-mapped: page cache, not counted)"]
            + [f"  {term.what.ljust(width)}  {_gib(term.bytes)}" for term in shown]
            + [f"  {'total'.ljust(width)}  {_gib(total)}{of}"])


def refusal(recipe_path: str, loaded, verdict: Verdict):
    """The RecipeError that `run` and `submit` exit 2 with."""
    from launcher.config.errors import Problem, RecipeError

    data = verdict.data
    if "cannot_train" in data:
        return RecipeError(recipe_path, [Problem(
            "batch.micro", f"the model cannot train at batch.micro={data['micro']}: {data['cannot_train']} "
            "(its trace at another size works)", f"{verdict.suggestion}; --no-memory-check starts it anyway",
            loaded.location("batch.micro"))])
    if data["fits"]:  # the device holds it; the node's host memory does not
        key, message = "cluster.nproc_per_node", (
            f"the job is predicted to need {_gib(data['host_bytes_per_node'])} of host memory per node, more than "
            f"its {_gib(data['node_memory_bytes'])}")
    else:
        key, message = "batch.micro", (
            f"the job is predicted to need {_gib(data['peak_bytes'])} per rank, more than the "
            f"{_gib(data['capacity_bytes'])} available ({data['capacity_source']})")
    return RecipeError(recipe_path, [Problem(key, message, f"{verdict.suggestion}; --no-memory-check starts it anyway",
                                             loaded.location(key))])
