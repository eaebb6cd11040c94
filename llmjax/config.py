"""The one schema of an llmjax run: every field, its default and its meaning, plus validation.

Presets under `configs/` start from `default_config()` and change values; they never add keys.
The returned ConfigDict is locked, so a misspelt override (`--config.model.num_layer=4`) fails
instead of being silently ignored. `validate` runs before anything is compiled or written, so a
bad run dies in a second with a message that names the key and the fix.
"""

from __future__ import annotations

import importlib.util
import math

import ml_collections

from llmjax import finetune
from llmjax.errors import ConfigError, config_error  # noqa: F401 - ConfigError is caught from here.
from llmjax.model import registry
from llmjax.train import objectives

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZER_NAMES = ("adamw", "muon")
INIT_MODES = ("params", "full")
MESH_AXES = ("data", "fsdp", "expert", "sequence", "tensor")




def default_config(family: str = "llama", objective: str | None = None) -> ml_collections.ConfigDict:
    """Every section with its defaults; the objective defaults to the family's first (causal LM
    for decoders, MLM for BERT)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds init, data order and any randomness; the run is a function of it.

    # The model section holds exactly the fields of its family (llmjax/model/spec.py for the
    # shared ones, llmjax/model/<family>/spec.py for the rest).
    c.model = ml_collections.ConfigDict(registry.get(family).defaults())

    # What the model is trained to predict (llmjax/train/objectives/).
    c.objective = ml_collections.ConfigDict(objectives.get(objective or registry.get(family).objectives[0]).defaults())

    c.data = d = ml_collections.ConfigDict()
    d.source = "stdlib"  # "stdlib" (this interpreter's stdlib source), a text directory or an llmjax-prepare output.
    d.mixture = ""  # Several prepared datasets with weights, "DIR:0.7,DIR:0.3"; overrides `source`.
    d.glob = "**/*.py"  # Files of `source` to read, relative glob.
    d.max_files = 0  # Use only the first N files in sorted order (0 = all); for quick tests.
    d.seq_len = 256  # Tokens per training sequence (<= model.max_seq_len).
    d.val_percent = 2  # Percent of files held out for validation, chosen by a hash of the path.
    d.cache_dir = ""  # Tokenizer and token cache; "" means $LLMJAX_CACHE or ~/.cache/llmjax.
    d.tokenizer = ""  # Raw-text sources: "" trains a byte-level BPE; else a tokenizer.json / .model to use.
    d.eos_id = -1  # With data.tokenizer: the id ending each document (-1: found by name, e.g. </s>).

    c.train = t = ml_collections.ConfigDict()
    t.steps = 400  # Optimizer steps.
    t.global_batch_size = 16  # Sequences per optimizer step, over all devices and microbatches.
    t.microbatches = 1  # Gradient accumulation: the global batch is split into this many parts.
    t.z_loss = 0.0  # Weight of the log(Z)^2 auxiliary loss that keeps logits from drifting.
    t.loss_chunk_len = 0  # Loss over this many positions at a time, logits recomputed in the backward pass (0 = all at once).
    t.log_every = 20  # Steps between progress lines and metric records.
    t.eval_every = 100  # Steps between validation passes (0 = only at the end).
    t.eval_batches = 8  # Validation batches per pass.

    t.guard_spike_factor = 3.0  # A step is bad if its loss exceeds this x the running mean (0 = only non-finite).
    t.guard_patience = 3  # After this many bad steps in a row, roll back to the last checkpoint.
    t.guard_max_rollbacks = 3  # Then give up: the run is diverging for good.
    t.inject_nan_at = ""  # Fault injection for tests: comma-separated data steps whose loss is NaN.

    c.checkpoint = ck = ml_collections.ConfigDict()
    ck.every_steps = 100  # Save every N steps (0 = no step schedule).
    ck.every_minutes = 0.0  # Also save when this much time has passed since the last save (0 = off).
    ck.keep_last = 3  # Keep the newest K checkpoints ...
    ck.keep_every = 0  # ... plus every step divisible by M, forever (0 = none).
    ck.async_save = True  # Write in the background; the loop blocks only for the host copy.
    ck.required = True  # A failed save stops the run (False: warn and train on without it).
    # A save still unfinished after this long fails instead of hanging the job: in a
    # multi-process job one process's failed write leaves the others waiting for it.
    ck.save_timeout_minutes = 10.0
    ck.init_from = ""  # Start from another run: "WORKDIR" or "WORKDIR@STEP" (latest if no step).
    ck.init_mode = "params"  # What init_from takes: params (new optimizer) | full (also its state).

    c.optimizer = o = ml_collections.ConfigDict()
    o.name = "adamw"  # adamw | muon (hidden matrices orthogonalised, AdamW for the rest; llmjax/train/muon.py).
    o.learning_rate = 3e-3  # Peak learning rate after warmup.
    o.schedule = "cosine"  # Decay after warmup: cosine | linear | constant.
    o.warmup_steps = 40  # Linear warmup from 0 to the peak.
    o.min_lr_ratio = 0.1  # Final learning rate as a fraction of the peak (cosine, linear).
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.1  # Decoupled (AdamW); never applied to norms and embeddings.
    o.grad_clip = 1.0  # Global-norm clipping threshold (0 = off).
    o.muon_beta = 0.95  # Muon's (Nesterov) momentum.
    o.muon_ns_steps = 5  # Newton-Schulz iterations per update.
    o.muon_rms = 0.2  # Muon's update RMS (x sqrt(max(rows, columns))): AdamW's, so they share learning rate and decay.

    # Adapting a pretrained run (checkpoint.init_from) to a task (llmjax/finetune/).
    c.finetune = ft = ml_collections.ConfigDict()
    ft.lora_rank = 0  # LoRA adapters of this rank on lora_targets, all else frozen (0 = off).
    ft.lora_alpha = 16.0  # An adapter's update is scaled by lora_alpha / lora_rank.
    # Projections that get adapters, by module name ("query,value,out,down"); empty: the family's
    # query and value projections (query,value; q,v for T5; GPT-2's fused qkv).
    ft.lora_targets = ""
    ft.freeze = ""  # Comma-separated regexes of parameter paths kept as they are (e.g. "embed,layers/attention").
    ft.lr_multipliers = ""  # Per-group learning rates, "REGEX=MULTIPLIER,..." (e.g. "task_head=10").

    c.tracking = tr = ml_collections.ConfigDict()
    tr.wandb = False  # Also log to Weights & Biases (needs `pip install 'llmjax[wandb]'`).
    tr.wandb_project = "llmjax"  # W&B project; the run is named after its workdir.

    # The mesh has two levels: `ici` within a host or slice (fast links), `dcn` across hosts or
    # slices (slow network). An axis's size is ici x dcn. On CPU a process stands in for a host.
    c.mesh = ms = ml_collections.ConfigDict()
    ms.ici = ici = ml_collections.ConfigDict()
    ici.data = -1  # Data parallel: params replicated. -1 fills the devices the other axes leave.
    ici.fsdp = 1  # Params, gradients and optimizer state sharded, gathered per layer.
    ici.expert = 1  # Experts of MoE layers split (tokens reach them by all-to-all); data parallel elsewhere.
    ici.sequence = 1  # Activations sharded along the sequence (long contexts).
    ici.tensor = 1  # Megatron-style: attention heads and MLP hidden split.
    ms.dcn = dcn = ml_collections.ConfigDict()
    dcn.data = 1  # Across hosts/slices: usually data parallelism only (least communication).
    dcn.fsdp = 1
    dcn.expert = 1
    dcn.sequence = 1
    dcn.tensor = 1

    c.lock()
    return c


def _fail(key: str, value, fix: str):
    raise config_error(key, value, fix)


def _value(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _choice(config, key: str, allowed) -> None:
    value = _value(config, key)
    if value not in allowed:
        _fail(key, value, f"must be one of {', '.join(allowed)}.")


def _positive(config, keys) -> None:
    for key in keys:
        value = _value(config, key)
        if not isinstance(value, int) or value < 1:
            _fail(key, value, "must be a positive integer.")


# Numbers a run cannot use outside their range: (key, test, what the key must be). NaN and the
# infinities pass no test: NaN compares false with everything, and the values must be finite.
RANGES = (
    ("seed", lambda v: isinstance(v, int) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("optimizer.learning_rate", lambda v: v > 0, "positive"),
    ("optimizer.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.eps", lambda v: v > 0, "positive (it keeps the Adam update finite)"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0 (0 = none)"),
    ("optimizer.min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("optimizer.grad_clip", lambda v: v >= 0, ">= 0 (0 disables clipping)"),
    ("optimizer.muon_beta", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.muon_ns_steps", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("optimizer.muon_rms", lambda v: v > 0, "positive"),
    ("train.z_loss", lambda v: v >= 0, ">= 0 (0 = off)"),
    ("train.guard_spike_factor", lambda v: v == 0 or v > 1,
     "0 (only non-finite losses are bad) or above 1 (a multiple of the running mean loss)"),
    ("checkpoint.every_minutes", lambda v: 0 <= v * 60 < math.inf, ">= 0 (0 = off), finite in seconds"),
    ("checkpoint.save_timeout_minutes", lambda v: 1 <= v * 60 < math.inf,
     "at least one second (1/60), finite in seconds; raise it if large saves take longer"),
    ("data.val_percent", lambda v: 0 < v < 100, "in (0, 100): runs are evaluated on held-out text"),
    ("data.max_files", lambda v: v >= 0, ">= 0 (0 = all)"),
    ("data.eos_id", lambda v: v >= -1, "a token id, or -1 (found by name)"),
)


def _in_range(config, key: str, test, requirement: str) -> None:
    value = _value(config, key)
    if not (isinstance(value, (int, float)) and math.isfinite(value) and test(value)):
        _fail(key, value, f"must be {requirement}.")


def apply_overrides(config, overrides: dict):
    """A copy of `config` with dotted keys set ({"optimizer.learning_rate": 1e-3}); a key the
    schema lacks or a value of the wrong type is refused with the key named."""
    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        try:
            for part in parents:
                node = node[part]
            if leaf not in node:
                raise KeyError(leaf)
            node[leaf] = value
        except (KeyError, AttributeError, TypeError) as error:
            if isinstance(error, TypeError):
                _fail(key, value, f"has the wrong type: {error}")
            owners = registry.owners(leaf) if parents == ["model"] else []
            _fail(key, value, f"is a field of the {', '.join(owners)} family, not of this config's "
                              f"model.family; start from a config of that family."
                  if owners else "no such config key; see llmjax/config.py for the schema.")
    return config


def check_family_keys(model, family) -> None:
    """config.model must hold exactly its family's fields: a field of another family (left
    over after changing model.family, say) is refused with the family it belongs to."""
    expected = family.defaults()
    for key in model:
        if key not in expected:
            owners = registry.owners(key)
            whose = f"a field of the {', '.join(owners)} famil{'ies' if len(owners) > 1 else 'y'}" \
                if owners else "no family's field"
            _fail(f"model.{key}", model[key],
                  f"is {whose}, not of model.family={family.name!r}; start from a {family.name} "
                  f"config (e.g. llmjax.presets.compose(...) with a {family.name} preset) instead "
                  f"of changing model.family on another family's config.")
    missing = [key for key in expected if key not in model]
    if missing:
        _fail(f"model.{missing[0]}", None, f"is missing; the {family.name} family needs "
                                           f"{', '.join(missing)}.")


def inject_nan_steps(config) -> frozenset[int]:
    return frozenset(int(x) for x in config.train.inject_nan_at.split(",") if x.strip())


def mesh_shapes(config, num_devices: int, num_processes: int = 1) -> tuple[dict, dict]:
    """(ici sizes, dcn sizes) with the one -1 ici axis filled, checked against the devices.
    With every dcn size 1 the mesh is flat over all devices; otherwise the dcn sizes multiply
    to the number of processes (hosts) and the ici sizes to the devices of one process."""
    dcn = {axis: config.mesh.dcn[axis] for axis in MESH_AXES}
    for axis, size in dcn.items():
        if not isinstance(size, int) or size < 1:
            _fail(f"mesh.dcn.{axis}", size, "must be a positive integer.")
    slices = math.prod(dcn.values())
    if slices > 1 and slices != num_processes:
        _fail("mesh.dcn", " x ".join(f"{a}={s}" for a, s in dcn.items()),
              f"spans {slices} hosts but the job has {num_processes} processes; make the dcn "
              f"sizes multiply to {num_processes}.")
    local = num_devices // slices
    ici = {axis: config.mesh.ici[axis] for axis in MESH_AXES}
    free = [axis for axis, size in ici.items() if size == -1]
    for axis, size in ici.items():
        if size != -1 and (not isinstance(size, int) or size < 1):
            _fail(f"mesh.ici.{axis}", size, "must be a positive integer or -1 (fill the rest).")
    if len(free) > 1:
        _fail(f"mesh.ici.{free[1]}", -1, f"only one mesh axis may be -1; {free} all are.")
    fixed = math.prod(size for size in ici.values() if size != -1)
    if free:
        if local % fixed:
            _fail(f"mesh.ici.{free[0]}", -1,
                  f"the other axes use {fixed} devices, which does not divide the "
                  f"{local} devices present; change the fixed axis sizes.")
        ici[free[0]] = local // fixed
    elif fixed != local:
        shown = " x ".join(f"{a}={s}" for a, s in ici.items())
        _fail("mesh.ici", shown,
              f"uses {fixed} devices but {local} are present"
              + (" per host" if slices > 1 else "") + f"; make the product {local} or set one "
              f"axis to -1.")
    return ici, dcn


def mesh_shape(config, num_devices: int, num_processes: int = 1) -> dict[str, int]:
    """Total size of each mesh axis (ici x dcn)."""
    ici, dcn = mesh_shapes(config, num_devices, num_processes)
    return {axis: ici[axis] * dcn[axis] for axis in MESH_AXES}


def parse_mixture(mixture: str) -> list[tuple[str, float]]:
    """'a:0.7,b:0.3' -> [('a', 0.7), ('b', 0.3)]; a malformed entry raises ValueError(entry)."""
    entries = []
    for item in filter(None, (part.strip() for part in mixture.split(","))):
        path, _, weight = item.rpartition(":")
        try:
            value = float(weight)
        except ValueError:
            raise ValueError(item) from None
        if not path or not 0 < value < math.inf:
            raise ValueError(item)
        entries.append((path, value))
    return entries


def check_fields(config) -> None:
    """Every constraint that holds whatever the devices: what a launcher checks once, before it
    starts a process on any host (`validate` adds the mesh's)."""
    m, t, d, o = config.model, config.train, config.data, config.optimizer
    family = registry.of(config)
    check_family_keys(config.model, family)
    family.spec.validate(m, None)
    objective = objectives.of(config)
    objective.check(config, family)
    _positive(config, ["data.seq_len", "train.steps", "train.global_batch_size",
                       "train.microbatches", "train.log_every", "train.eval_batches"])
    _choice(config, "optimizer.schedule", SCHEDULES)
    _choice(config, "optimizer.name", OPTIMIZER_NAMES)
    _choice(config, "checkpoint.init_mode", INIT_MODES)
    _positive(config, ["checkpoint.keep_last", "train.guard_patience"])
    for key in ("checkpoint.every_steps", "checkpoint.keep_every", "train.guard_max_rollbacks"):
        value = _value(config, key)
        if not isinstance(value, int) or value < 0:
            _fail(key, value, "must be an integer >= 0.")
    for key, test, requirement in RANGES:
        _in_range(config, key, test, requirement)
    try:
        inject_nan_steps(config)
    except ValueError:
        _fail("train.inject_nan_at", t.inject_nan_at, "must be comma-separated integers.")
    if d.seq_len > m.max_seq_len:
        _fail("data.seq_len", d.seq_len,
              f"exceeds model.max_seq_len={m.max_seq_len}; lower it or raise max_seq_len.")
    try:
        parse_mixture(d.mixture)
    except ValueError as error:
        _fail("data.mixture", d.mixture, f"entry {error} is not PATH:WEIGHT with a positive, finite weight; "
                                         f"give entries like 'web:0.7,code:0.3'.")
    if t.loss_chunk_len < 0 or (t.loss_chunk_len and d.seq_len % t.loss_chunk_len):
        _fail("train.loss_chunk_len", t.loss_chunk_len,
              f"must be 0 (off) or a divisor of data.seq_len={d.seq_len}.")
    if t.eval_every < 0:
        _fail("train.eval_every", t.eval_every, "must be >= 0 (0 = evaluate only at the end).")
    if o.warmup_steps < 0 or o.warmup_steps >= t.steps:
        _fail("optimizer.warmup_steps", o.warmup_steps,
              f"must be in [0, train.steps={t.steps}).")
    if objective.check_fields is not None:  # Its fields on one device; `validate` adds the mesh's.
        objective.check_fields(config, dict.fromkeys(MESH_AXES, 1))

    finetune.check(config)
    if config.tracking.wandb and importlib.util.find_spec("wandb") is None:
        _fail("tracking.wandb", True, "the wandb package is not installed; pip install "
                                      "'llmjax[wandb]' or set --config.tracking.wandb=False.")


def validate(config, num_devices: int, num_processes: int = 1) -> dict[str, int]:
    """Checks every cross-field constraint; returns the resolved mesh shape."""
    check_fields(config)
    m, t, d = config.model, config.train, config.data
    family, objective = registry.of(config), objectives.of(config)
    shape = mesh_shape(config, num_devices, num_processes)
    if d.seq_len % shape["sequence"]:
        _fail("data.seq_len", d.seq_len, f"must be divisible by the sequence axis size "
                                         f"{shape['sequence']}.")
    if objective.check_fields is not None:
        objective.check_fields(config, shape)
    batch_shards = shape["data"] * shape["fsdp"] * shape["expert"]
    if t.global_batch_size % t.microbatches:
        _fail("train.global_batch_size", t.global_batch_size,
              f"must be divisible by train.microbatches={t.microbatches}.")
    micro = t.global_batch_size // t.microbatches
    if micro % batch_shards:
        _fail("train.global_batch_size", t.global_batch_size,
              f"each microbatch of {micro} sequences must split evenly over the "
              f"{batch_shards} data-parallel shards (data x fsdp x expert mesh axes); use a multiple "
              f"of {batch_shards * t.microbatches}.")
    family.spec.validate(m, shape)
    return shape
