"""One bootstrap for everything that runs a model: training, evaluation, planning, benchmarks
and sampling all get their mesh, optimizer, abstract state, shardings, batch layout and
compiled steps here, in one order, so they cannot drift apart.

Nothing is allocated: the parameters' shapes and logical axes come from one `jax.eval_shape`
of the family's `init`, the optimizer state's from one of `tx.init`, and the rules table turns
logical axes into shardings. The steps are compiled ahead of time against those abstract
arrays, with the mesh and the axis rules entered around tracing (the model code never enters
them itself).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from llmjax import model
from llmjax.data import pipeline
from llmjax.errors import LlmjaxError
from llmjax.parallel.mesh import build_mesh
from llmjax.parallel.rules import AXIS_RULES, logical_to_sharding
from llmjax.train import objectives
from llmjax.train.objectives.fields import Field, abstract_batch
from llmjax.train.optimizer import build_optimizer
from llmjax.train.state import TrainState, create_train_state
from llmjax.train.step import eval_step, position_eval_step, train_step


def abstract_params(config):
    """(params as ShapeDtypeStructs, their logical-axis PartitionSpecs): one eval_shape."""
    boxed = jax.eval_shape(functools.partial(model.init, config=config), jax.random.key(0))
    return nn.unbox(boxed), nn.get_partition_spec(boxed)


def with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@dataclasses.dataclass
class Run:
    """A config bound to a mesh: abstract params (and state, when training), their shardings,
    the batch layout and the compiled steps."""
    config: object
    mesh: jax.sharding.Mesh
    param_axes: dict  # Logical-axis PartitionSpec of every parameter.
    params: dict  # ShapeDtypeStructs carrying their shardings.
    tx: optax.GradientTransformation | None = None
    state: TrainState | None = None  # Abstract train state (with tx only).

    @property
    def objective(self):
        return objectives.of(self.config).impl()

    @contextlib.contextmanager
    def context(self):
        """The mesh and the axis rules, as tracing the model needs them."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(AXIS_RULES):
            yield

    def sharding(self, axes) -> NamedSharding:
        return logical_to_sharding(PartitionSpec(*axes), self.mesh)

    def batch_fields(self, batch_size: int | None = None) -> dict[str, Field]:
        return self.objective.fields(self.config, batch_size or self.config.train.global_batch_size)

    def batch_shardings(self, batch_size: int | None = None) -> dict[str, NamedSharding]:
        return {name: self.sharding(f.axes) for name, f in self.batch_fields(batch_size).items()}

    def train_batches(self, datasets, tokenizer=None) -> pipeline.GlobalBatches:
        """The batch of every step: the objective's rows of the (mixed) packed windows of
        `datasets` (of the task, for a fine-tuning run, which has only a `tokenizer`), each
        process loading only the rows its devices hold."""
        token_ids = self.objective.token_ids(tokenizer or datasets[0][0].tokenizer, self.config)  # One for all.
        rows = self.objective.train_rows(datasets, self.config, token_ids)
        return pipeline.GlobalBatches(rows, {k: f.shape for k, f in self.batch_fields().items()},
                                      self.batch_shardings())

    def lower_train_step(self):
        """The train step lowered for the abstract state, state donated."""
        shardings = jax.tree.map(lambda x: x.sharding, self.state)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        step = jax.jit(functools.partial(train_step, config=self.config, tx=self.tx),
                       in_shardings=(shardings, self.batch_shardings()),
                       out_shardings=(shardings, replicated), donate_argnums=0)
        with self.context():
            return step.lower(self.state, abstract_batch(self.batch_fields(), self.sharding))

    def compile_eval_step(self, batch_size: int | None = None, per_position: bool = False):
        """The eval step compiled for the abstract params: the objective's evaluation sums
        (with `per_position`, its sums per position in the context instead)."""
        shardings = jax.tree.map(lambda x: x.sharding, self.params)
        step = position_eval_step if per_position else eval_step
        if per_position and getattr(self.objective, "position_sums", None) is None:
            raise LlmjaxError(f"objective {self.objective.name} has no per-position losses (they are the loss "
                              f"against context length, of a decoder-only or bidirectional model); evaluate "
                              f"without --per_position.")
        evaluate = jax.jit(functools.partial(step, config=self.config),
                           in_shardings=(shardings, self.batch_shardings(batch_size)),
                           out_shardings=NamedSharding(self.mesh, PartitionSpec()))
        with self.context():
            return evaluate.lower(self.params, abstract_batch(self.batch_fields(batch_size),
                                                              self.sharding)).compile()

    def compile_steps(self):
        """(train step, eval step), both compiled, so a run never recompiles and the compile
        time is measured on its own."""
        with self.context():
            return self.lower_train_step().compile(), self.compile_eval_step()

    def create_state(self) -> TrainState:
        """A freshly initialised state, each device computing only its own shards."""
        return create_train_state(self.config, self.tx, jax.tree.map(lambda x: x.sharding, self.state))


def bootstrap(config, *, train: bool = True, devices=None) -> Run:
    """The run of `config` on `devices` (default: all). With `train=False` (evaluation,
    sampling) no optimizer is built and only the params are laid out."""
    mesh = build_mesh(config, devices)
    params, axes = abstract_params(config)
    param_shardings = logical_to_sharding(axes, mesh)
    run = Run(config=config, mesh=mesh, param_axes=axes, params=with_shardings(params, param_shardings))
    if not train:
        return run
    tx = build_optimizer(config, axes)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shapes = jax.eval_shape(tx.init, params)
    # A fine-tuning optimizer keeps no state for frozen parameters (optax.MaskedNode there).
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_shardings = optax.tree_map_params(tx, lambda x, sharding: x if masked(x) else sharding, opt_shapes,
                                          param_shardings, transform_non_params=lambda _: replicated,
                                          is_leaf=masked)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    run.tx = tx
    run.state = TrainState(step=scalar, params=run.params, opt_state=with_shardings(opt_shapes, opt_shardings),
                           skipped_steps=scalar)
    return run
