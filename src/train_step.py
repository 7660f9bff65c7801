"""One optimisation step and its schedule, shared by every method.

`total_steps` is the one rule for how long a run trains (the LR schedule and the Trainer both read it);
`build_train_step` turns a loss cell plus the config's `optim:` section and a phase's schedule section
(`epochs, batch_size, lr, warmup_ratio, max_steps`) into a TrainStep and its LR schedule.
"""
from mindspore import nn, ops
import mindspore as ms

from src.errors import UserError


def epochs_to_run(steps_per_epoch: int, epochs: int, max_steps: int) -> int:
    """`epochs`, or with epochs 0 (and max_steps > 0) as many epochs as `max_steps` steps need."""
    return epochs if epochs else -(-max_steps // max(steps_per_epoch, 1))


def total_steps(steps_per_epoch: int, epochs: int, max_steps: int) -> int:
    """Optimizer steps of a run: every batch of `epochs` epochs, capped at `max_steps` when it is > 0 (epochs 0:
    exactly max_steps)."""
    total = steps_per_epoch * epochs_to_run(steps_per_epoch, epochs, max_steps)
    return min(total, max_steps) if max_steps else total


class WarmupLinearDecayLR(nn.learning_rate_schedule.LearningRateSchedule):
    """Linear warmup from 0 to `lr` over `warmup_steps`, then linear decay to `end_lr` at `total_steps`
    (BERT / HF schedule; the model-zoo's schedule overlaps warmup and decay, which we do not reproduce)."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0):
        super().__init__()
        self.lr = float(lr)
        self.end_lr = float(end_lr)
        self.total = float(max(total_steps, 1))
        self.warmup = float(max(warmup_steps, 0))

    def construct(self, global_step):
        step = global_step.astype(ms.float32)
        if self.warmup > 0:
            warm = self.lr * ops.minimum(step / self.warmup, 1.0)
        else:
            warm = self.lr * ops.ones_like(step)
        frac = ops.clip_by_value((step - self.warmup) / ops.maximum(self.total - self.warmup, 1.0), 0.0, 1.0)
        decayed = self.lr - (self.lr - self.end_lr) * frac
        return ops.select(step < self.warmup, warm, decayed)

    def value(self, step: int) -> float:
        """Host-side value for logging."""
        if step < self.warmup:
            return self.lr * step / self.warmup
        frac = min(max((step - self.warmup) / max(self.total - self.warmup, 1.0), 0.0), 1.0)
        return self.lr - (self.lr - self.end_lr) * frac


def build_optimizer(params, lr_schedule, weight_decay: float, eps: float = 1e-6,
                    decay_filter=("layernorm", "bias")):
    """AdamWeightDecay with weight decay off for LayerNorm and bias parameters (names matched case-insensitively)."""
    params = [p for p in params if p.requires_grad]
    is_nodecay = [any(k in p.name.lower() for k in decay_filter) for p in params]
    nodecay = [p for p, n in zip(params, is_nodecay) if n]
    decay = [p for p, n in zip(params, is_nodecay) if not n]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0},
              {"order_params": params}]
    return nn.AdamWeightDecay(groups, learning_rate=lr_schedule, eps=eps)


class TrainStep(nn.Cell):
    """One optimisation step for any loss cell returning (loss, parts).

    grads -> (data parallel: averaged exactly once by DistributedGradReducer, mean=True) -> unscale (loss
    scale) -> clip (global norm, or per tensor as the anchors) -> optimizer. With a loss scale > 1 (fp16 on
    Ascend/GPU) a step whose gradients overflow is skipped. Returns (loss, parts, grad_norm). Data parallel: the
    loss is the mean over workers (the global batch's loss, the same number on every worker, so decisions taken on
    it, such as the divergence stop, agree); the parts are this worker's.
    """

    CLIP_MODES = ("global", "per_tensor", "none")

    def __init__(self, loss_net: nn.Cell, optimizer: nn.Optimizer, clip_norm: float = 1.0,
                 clip_mode: str = "global", loss_scale: float = 1.0, data_parallel: bool = False):
        super().__init__(auto_prefix=False)
        if clip_mode not in self.CLIP_MODES:
            raise ValueError(f"optim.clip_mode '{clip_mode}' not supported: expected one of {self.CLIP_MODES}")
        self.loss_net = loss_net
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.clip_norm = float(clip_norm)
        self.clip_mode = clip_mode
        self.loss_scale = float(loss_scale)
        self.grad_fn = ops.value_and_grad(self._scaled_loss, None, self.weights, has_aux=True)
        self.map = ops.HyperMap()
        self.reducer = None
        if data_parallel:
            from mindspore.nn.wrap.grad_reducer import DistributedGradReducer
            from mindspore.communication import get_group_size
            self.reducer = DistributedGradReducer(self.weights, mean=True, degree=get_group_size())
            self.loss_sum = ops.AllReduce()
            self.degree = float(get_group_size())

    def _scaled_loss(self, *inputs):
        loss, parts = self.loss_net(*inputs)
        return loss * self.loss_scale, (loss, parts)

    def construct(self, *inputs):
        (_, (loss, parts)), grads = self.grad_fn(*inputs)
        if self.reducer is not None:
            grads = self.reducer(grads)
            loss = self.loss_sum(loss) / self.degree
        if self.loss_scale != 1.0:
            grads = self.map(ops.partial(_scale_grad, 1.0 / self.loss_scale), grads)
        half_sq = self.map(_half_sq_norm, grads)
        norm = ops.sqrt(2.0 * ops.addn(half_sq))
        if self.clip_mode == "global":
            grads = self.map(ops.partial(_scale_grad, self.clip_norm / ops.maximum(norm, self.clip_norm)), grads)
        elif self.clip_mode == "per_tensor":
            grads = self.map(ops.partial(_clip_by_own_norm, self.clip_norm), half_sq, grads)
        if self.loss_scale != 1.0:
            finite = ops.isfinite(norm)
            if finite:
                loss = ops.depend(loss, self.optimizer(grads))
        else:
            loss = ops.depend(loss, self.optimizer(grads))
        return loss, parts, norm


# Per-gradient maps of TrainStep. They run through ops.HyperMap, not Python comprehensions: an unrolled tuple
# comprehension over ~100 gradients doubled the compile time of every training graph (15 s -> 7 s for a
# TinyBERT step on MindSpore 2.10 CPU). The squared norm is L2Loss (sum(g^2) / 2, one kernel): `square(g).sum()`
# ran a separate ReduceSum that took ~50 ms a step on the 30522x384 word-embedding gradient alone.
_scale_grad = ops.MultitypeFuncGraph("scale_grad")


_half_sq_norm = ops.MultitypeFuncGraph("half_sq_norm")


_clip_by_own_norm = ops.MultitypeFuncGraph("clip_by_own_norm")


_l2_loss = ops.L2Loss()


@_scale_grad.register("Number", "Tensor")
@_scale_grad.register("Tensor", "Tensor")
def _scale_grad_tensor(scale, grad):
    return grad * scale


@_half_sq_norm.register("Tensor")
def _half_sq_norm_tensor(grad):
    return _l2_loss(grad)


@_clip_by_own_norm.register("Number", "Tensor", "Tensor")
def _clip_by_own_norm_tensor(clip_norm, half_sq, grad):
    return grad * (clip_norm / ops.maximum(ops.sqrt(2.0 * half_sq), clip_norm))


def schedule_and_optimizer(params, optim, sched, steps_per_epoch: int):
    """(LR schedule, AdamWeightDecay) for `params`: warmup over `sched.warmup_ratio` of the run's total steps
    (`total_steps`), then linear decay to `optim.end_lr`; weight decay off for LayerNorm and bias."""
    total = total_steps(steps_per_epoch, sched.epochs, sched.max_steps)
    lr = WarmupLinearDecayLR(sched.lr, total, int(total * sched.warmup_ratio), optim.end_lr)
    return lr, build_optimizer(params, lr, optim.weight_decay, optim.eps)


def make_train_step(loss_net, optimizer, optim, distributed: bool) -> "TrainStep":
    """A TrainStep (in training mode) with the clipping and loss scale of the `optim:` section."""
    try:
        step = TrainStep(loss_net, optimizer, optim.clip_norm, optim.clip_mode, optim.loss_scale,
                         data_parallel=distributed)
    except ValueError as e:
        raise UserError(str(e)) from None
    step.set_train(True)
    return step


def build_train_step(loss_net, optim, sched, steps_per_epoch: int, distributed: bool):
    """(TrainStep, LR schedule) for a loss cell: `optim` is the config's `optim:` section, `sched` the phase's
    schedule section (`train:`, `td1:`, ...)."""
    lr, opt = schedule_and_optimizer(loss_net.trainable_params(), optim, sched, steps_per_epoch)
    return make_train_step(loss_net, opt, optim, distributed), lr
