"""Causal-LM training with optax on a mesh, checkpointed with Orbax and resumable.

Used to build the demo model, to fine-tune SmolLM2 into memorizing passages, and for the
relearning stress test. The batch for step i is `batches(i)` (a deterministic function of the step),
so an interrupted run resumes to exactly the same parameters.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from kfac_mem.sharding import logical_to_sharding
from kfac_mem.validation import check_fields
from models import axes

Params = Any


OPTIMIZERS = ("adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization settings, counted in steps: `warmup_steps` of linear warmup, then cosine decay
    to `end_learning_rate_fraction`·`learning_rate` at `steps` (the schedule's fields share their
    names with `kfac_mem.vision.train.TrainConfig`, counted in epochs)."""

    steps: int
    batch_size: int
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    end_learning_rate_fraction: float = 0.1  # cosine decay to this fraction of the peak
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    log_every: int = 50
    optimizer: str = "adamw"  # adamw | sgd

    def __post_init__(self):
        check_fields(
            self,
            at_least_one=("steps", "batch_size", "checkpoint_every", "log_every"),
            positive=("learning_rate", "grad_clip"),
            non_negative=("warmup_steps", "weight_decay"),
            fractions=("end_learning_rate_fraction",),
            choices={"optimizer": OPTIMIZERS},
        )

    def schedule(self) -> optax.Schedule:
        return optax.warmup_cosine_decay_schedule(
            0.0,
            self.learning_rate,
            max(1, self.warmup_steps),
            max(self.steps, self.warmup_steps + 1),
            self.learning_rate * self.end_learning_rate_fraction,
        )

    def optimizer_(self) -> optax.GradientTransformation:
        if self.optimizer == "sgd":
            opt = optax.sgd(self.schedule())
        elif self.optimizer == "adamw":
            opt = optax.adamw(self.schedule(), b1=0.9, b2=0.95, weight_decay=self.weight_decay)
        else:
            raise ValueError(f"`optimizer` must be 'adamw' or 'sgd', got {self.optimizer!r}.")
        return optax.chain(optax.clip_by_global_norm(self.grad_clip), opt)


def next_token_loss(model, params: Params, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy over labelled positions (all but the last of each window).

    Negative ids are right padding of windows shorter than the array (`kfac_mem.evaluation.ragged`
    `PAD`, docs/design.md §3): they are fed as token 0 and no position predicts them, so a padded
    window's loss is that of the window alone (a causal model never lets a token see later pads).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    real = tokens >= 0
    inputs, labels, weights = model.loss_targets(jnp.where(real, tokens, 0))
    weights = weights * jnp.concatenate([real[:, 1:], jnp.zeros_like(real[:, :1])], axis=1)
    logits = model.apply(params, inputs)[0].astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)[..., 0]
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def train(
    model,
    batches: Callable[[int], np.ndarray],
    config: TrainConfig,
    *,
    checkpoint_dir: str | None = None,
    loss_fn: Callable[[Any, Params, jax.Array], jax.Array] = next_token_loss,
    log: Callable[[str], None] | None = print,
) -> tuple[Params, list[dict[str, float]]]:
    """Train `model.params` for `config.steps` steps; returns (params, history of logged losses).

    With `checkpoint_dir`, parameters and optimizer state are saved every `checkpoint_every` steps
    and at the end, and a rerun continues from the latest checkpoint (a finished run returns at
    once).
    """
    mesh, rules = model.mesh, model.rules
    opt = config.optimizer_()
    params = model.params
    opt_state = opt.init(params)  # eager: each moment keeps its parameter's sharding
    start = 0
    manager = None
    if checkpoint_dir is not None:
        manager = ocp.CheckpointManager(
            os.path.abspath(checkpoint_dir),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "info": ocp.JsonCheckpointHandler(),
            },
        )
        if manager.latest_step() is not None:
            target = jax.tree_util.tree_map(
                ocp.utils.to_shape_dtype_struct, {"params": params, "opt": opt_state}
            )
            restored = manager.restore(
                manager.latest_step(),
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), info=ocp.args.JsonRestore()
                ),
            )
            params, opt_state = restored["state"]["params"], restored["state"]["opt"]
            start = int(restored["info"]["step"])
    history: list[dict[str, float]] = []

    @jax.jit
    def step_fn(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, tokens))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def place(batch: np.ndarray) -> jax.Array:
        if mesh is None:
            return jnp.asarray(batch, jnp.int32)
        sh = logical_to_sharding((axes.ACT_BATCH, None), batch.shape, mesh, rules)
        return jax.make_array_from_callback(
            batch.shape, sh, lambda idx: np.asarray(batch[idx], np.int32)
        )

    def save(step):
        if manager is not None:
            manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave({"params": params, "opt": opt_state}),
                    info=ocp.args.JsonSave({"step": step}),
                ),
                force=True,
            )
            manager.wait_until_finished()

    running = []
    for step in range(start, config.steps):
        params, opt_state, loss = step_fn(params, opt_state, place(batches(step)))
        running.append(loss)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            mean = float(np.mean(jax.device_get(running)))
            running = []
            history.append({"step": step + 1, "loss": mean})
            if log is not None:
                log(f"step {step + 1}/{config.steps} loss {mean:.4f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            save(step + 1)
    if start < config.steps:
        save(config.steps)
    if manager is not None:
        manager.close()
    return params, history
