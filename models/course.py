"""The worked examples of the course notes ("apuntes"), as code.

notebooks/concepts.ipynb shows them and tests/test_concepts.py asserts their numbers; both import
from here so each example is written once. Item 6 (regularization) is shown with the real training recipe in
notebooks/regularization.ipynb; only its toy demonstrations (dropout, Adam's L2 against AdamW's decay) are here.
"""

import copy
import gzip
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data import DEBIAN_FASHION_MNIST
from models.lstm import open_forget_gates


def fit(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn, optimizer: torch.optim.Optimizer,
        steps: int) -> list[float]:
    # Full batch: every step sees all the data, so the loss curve shows the optimizer, not the sampling.
    # torch.optim.SGD only does w <- w - lr * grad: fed the whole data set it is plain (deterministic) gradient
    # descent; it is "stochastic" only when each step's gradient comes from a random mini-batch.
    # losses[i] is the loss after i steps: losses[0] the untrained model's, losses[-1] the trained one's (steps + 1).
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)  # the loss after the steps so far, whose gradient this step follows
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(loss_fn(model(inputs), targets).item())  # and after the last step
    return losses


def logit_bce(logits: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits.squeeze(-1), targets)  # (N, 1) logits vs (N,) 0/1


# ---- 1. One neuron, XOR, and why layers need a non-linearity -------------------------------------

BOOLEAN_INPUTS = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # (4, 2): x1, x2
AND_TARGETS = torch.tensor([0.0, 0.0, 0.0, 1.0])
OR_TARGETS = torch.tensor([0.0, 1.0, 1.0, 1.0])
XOR_TARGETS = torch.tensor([0.0, 1.0, 1.0, 0.0])

# The notes' "rain" neuron: 4*x1 + 5*x2 - 6 > 0, i.e. the decision line x2 = -4/5*x1 + 6/5.
# On 0/1 inputs only (1, 1) lies above it, so it is an AND.
AND_WEIGHTS, AND_BIAS = torch.tensor([4.0, 5.0]), -6.0
OR_WEIGHTS, OR_BIAS = torch.tensor([1.0, 1.0]), -0.5  # the line x1 + x2 = 0.5 leaves only (0, 0) below


def step(x: Tensor) -> Tensor:
    # 1 where x > 0, else 0. Built from sign() because autograd gives sign the derivative 0,
    # which is the notes' step' = 0 (almost everywhere); a comparison would cut the graph instead.
    return torch.sign(x).clamp(min=0)


def neuron(x: Tensor, weights: Tensor, bias: float, activation=step) -> Tensor:
    return activation(x @ weights + bias)  # (N, 2) @ (2,) -> (N,)


def accuracy(predicted: Tensor, targets: Tensor) -> float:
    return (predicted == targets).float().mean().item()


def best_linear_accuracy(x: Tensor, targets: Tensor, grid: Tensor) -> float:
    # Tries every (w1, w2, b) on the grid at once: (G, G, G, N) pre-activations.
    w1, w2, b = torch.meshgrid(grid, grid, grid, indexing="ij")
    z = w1[..., None] * x[:, 0] + w2[..., None] * x[:, 1] + b[..., None]
    return (step(z) == targets).float().mean(-1).max().item()


def train_single_neuron(x: Tensor, targets: Tensor, steps: int = 2000, lr: float = 0.5,
                        seed: int = 0) -> tuple[Tensor, nn.Linear]:
    torch.manual_seed(seed)
    unit = nn.Linear(2, 1)  # a sigmoid neuron trained with cross-entropy (logistic regression)
    fit(unit, x, targets, logit_bce, torch.optim.SGD(unit.parameters(), lr=lr), steps)
    return (unit(x).squeeze(-1) > 0).float().detach(), unit  # predicted 0/1: sigmoid > 0.5 iff logit > 0


def xor_by_hand(x: Tensor) -> Tensor:
    # Hidden layer: an OR unit and an AND unit; the output fires for "OR and not AND".
    hidden = torch.stack([neuron(x, OR_WEIGHTS, OR_BIAS), neuron(x, AND_WEIGHTS, AND_BIAS)], dim=-1)
    return neuron(hidden, torch.tensor([1.0, -1.0]), -0.5)


def train_xor_mlp(steps: int = 1000, lr: float = 0.1, seed: int = 1) -> tuple[nn.Module, list[float]]:
    # Two sigmoid units are the minimum, and with so few most seeds stall: 7 of seeds 0-11 end 3/4 or 2/4 right,
    # on a flat region where saturated units drift towards infinite weights while the loss falls ever more slowly
    # (no true local minimum: Hamey 1998 showed the 2-2-1 network has none under squared error; we train it with
    # cross-entropy, where the stalled runs' loss still falls). Seed 1 is one of the five that solve it.
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1))  # 2 -> 2 hidden -> 1 logit
    optimizer = torch.optim.Adam(mlp.parameters(), lr=lr)
    return mlp, fit(mlp, BOOLEAN_INPUTS, XOR_TARGETS, logit_bce, optimizer, steps)


def collapse_linear_stack(stack: nn.Sequential) -> nn.Linear:
    # W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2): without an activation, depth adds nothing.
    first, *rest = stack
    weight, bias = first.weight, first.bias  # torch stores (out, in); the notes write the transpose
    for layer in rest:
        weight, bias = layer.weight @ weight, layer.weight @ bias + layer.bias
    single = nn.Linear(weight.shape[1], weight.shape[0])
    single.weight.data, single.bias.data = weight.detach(), bias.detach()
    return single


# ---- 2. Activations and the derivatives the notes give -------------------------------------------

LEAKY_SLOPE = 0.1  # leaky ReLU's slope for x < 0 (torch's default is 0.01; 0.1 shows on the plot)

# name -> (function, derivative written as in the notes)
ACTIVATIONS = {
    "sigmoid": (torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x))),
    "tanh": (torch.tanh, lambda x: 1 - torch.tanh(x) ** 2),
    "relu": (torch.relu, lambda x: (x > 0).to(x.dtype)),
    # ReLU's gradient is 0 for every x < 0: a unit whose input stays negative never learns again ("dies"). The leak
    # keeps a small slope there.
    "leaky_relu": (lambda x: F.leaky_relu(x, LEAKY_SLOPE),
                   lambda x: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, LEAKY_SLOPE))),
    "step": (step, torch.zeros_like),
    "identity": (lambda x: x, torch.ones_like),
}


# Initial weights must keep the signal's scale through the layers: with zero-mean weights a unit's pre-activation
# has variance fan_in * Var(w) * E[input^2] (the mean square: ReLU outputs are not centred), and the activation keeps
# part of it. name -> (torch.nn.init function for a (fan_out, fan_in) weight,
# activation). N(0, 1) grows the signal sqrt(fan_in) times a layer and tanh saturates at +-1 (slope ~0: nothing
# learns); Xavier/Glorot (Var 2/(fan_in + fan_out)) suits tanh, He/Kaiming (Var 2/fan_in) ReLU, which zeroes half its
# inputs and so halves the mean square (He's 2 makes up for it; under Xavier the signal shrinks layer by layer).
# nn.Linear's own default (Var 1/(3 fan_in)) fades fastest.
INITIALISATIONS = {
    "N(0, 1), tanh": (nn.init.normal_, torch.tanh),
    "Xavier, tanh": (nn.init.xavier_normal_, torch.tanh),
    "Xavier, ReLU": (nn.init.xavier_normal_, torch.relu),
    "He, ReLU": (lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), torch.relu),
    "nn.Linear default, ReLU": (lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5)), torch.relu),
}


def activation_scales(init, activation, depth: int = 20, width: int = 256, samples: int = 1000,
                      seed: int = 0) -> tuple[list[float], float | None, float]:
    """Random inputs through `depth` square layers (no bias) initialised by `init`: the standard deviation of each
    layer's activations; the fraction of the last layer's outputs saturated (|a| > 0.99, slope ~0), or None for an
    activation that is not bounded (ReLU never saturates above 0: a large output is just large); and the fraction
    exactly 0 (ReLU's off side, where its slope is 0 too)."""
    torch.manual_seed(seed)
    x, stds = torch.randn(samples, width), []  # (samples, width), variance 1
    for _ in range(depth):
        x = activation(x @ init(torch.empty(width, width)).T)
        stds.append(x.std().item())
    bounded = activation(torch.tensor([-100.0, 100.0])).abs().max() <= 1
    saturated = (x.abs() > 0.99).float().mean().item() if bounded else None
    return stds, saturated, (x == 0).float().mean().item()


def autograd_derivative(function, x: Tensor) -> Tensor:
    x = x.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(function(x).sum(), x)  # elementwise f, so d sum / dx_i = f'(x_i)
    return gradient


def softmax_by_hand(a: Tensor) -> tuple[Tensor, Tensor]:
    # The notes' formula, literally. exp overflows float32 above a score of ~88 (exp(1000) = inf): the softmax of
    # [1000, 0, 0] comes out [NaN, 0, 0] (inf / inf for the large score, 1 / inf for the others), not [1, 0, 0].
    exponentials = torch.exp(a)  # (..., K) scores
    total = exponentials.sum(-1, keepdim=True)  # (..., 1): the normaliser
    return total, exponentials / total


def softmax_jacobian(s: Tensor) -> Tensor:
    # d s_i / d a_j = s_i (delta_ij - s_j): raising one score raises its own probability and lowers every other.
    return torch.diag_embed(s) - s[..., :, None] * s[..., None, :]  # (..., K, K) from the probabilities (..., K)


def log_softmax_by_hand(a: Tensor) -> Tensor:
    # Softmax does not change when every score moves by the same constant (it cancels in the ratio). Subtracting
    # the largest score m makes every exponent <= 0, so nothing overflows and the largest term is exp(0) = 1:
    # log softmax(a) = a - log sum exp(a) = (a - m) - log sum exp(a - m), the "log-sum-exp trick".
    shifted = a - a.max(-1, keepdim=True).values  # (..., K), all <= 0
    return shifted - torch.log(torch.exp(shifted).sum(-1, keepdim=True))


def stable_softmax(a: Tensor) -> Tensor:
    return torch.exp(log_softmax_by_hand(a))  # equal to torch.softmax (to float rounding)


# ---- 3. Losses, from the formula -----------------------------------------------------------------

def mse(predicted: Tensor, targets: Tensor) -> Tensor:
    return ((targets - predicted) ** 2).mean()


# The notes' formulas take probabilities; computed literally they break on confident outputs. A sigmoid of 20
# is 1.0 in float32, so with y = 0 the term ln(1 - p) is ln 0 = -inf (F.binary_cross_entropy clamps each log at
# -100 and says 100; the true loss is 20); a softmax of logits [1000, 0, 0] is [NaN, 0, 0]. The cure is to take logits
# and never form the probability: F.cross_entropy is log_softmax followed by nll_loss (the mean of minus the true
# class's log-probability), and F.binary_cross_entropy_with_logits is the sigmoid and the BCE in one stable
# formula. That is why networks here return logits, never end in a Softmax or Sigmoid layer, and why
# models/recipe.py uses those two losses. (A Softmax layer before F.cross_entropy would apply softmax twice.)

def binary_cross_entropy(probabilities: Tensor, targets: Tensor) -> Tensor:
    p, y = probabilities, targets  # p exactly 0 or 1: inf where y disagrees, NaN (0 * ln 0) where it agrees
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def binary_cross_entropy_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    # With p = sigmoid(z): ln p = -softplus(-z) and ln(1 - p) = -softplus(z), so the loss is softplus(z) - y z.
    # softplus(z) = ln(1 + e^z) = max(z, 0) + ln(1 + e^-|z|) never exponentiates a positive number.
    z, y = logits, targets
    return (z.clamp(min=0) + torch.log1p(torch.exp(-z.abs())) - y * z).mean()


def negative_log_likelihood(log_probabilities: Tensor, classes: Tensor) -> Tensor:
    # F.nll_loss: minus the mean log-probability given to the true class; (N, K) and (N,) class indices.
    # Negated before the mean, so that a sure right answer scores 0, not -0.
    return (-log_probabilities[torch.arange(len(classes)), classes]).mean()


def categorical_cross_entropy(logits: Tensor, classes: Tensor) -> Tensor:
    return negative_log_likelihood(torch.log(softmax_by_hand(logits)[1]), classes)  # the notes' -ln softmax_y


def cross_entropy_from_logits(logits: Tensor, classes: Tensor) -> Tensor:
    return negative_log_likelihood(log_softmax_by_hand(logits), classes)  # what F.cross_entropy computes


# ---- 4. Backpropagation by hand, and gradient descent on a line ----------------------------------

def sigmoid_network_parameters(inputs: int, hidden: int, outputs: int, seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)  # float64 so hand and autograd agree to ~1e-15
    shapes = {"w1": (inputs, hidden), "b1": (hidden,), "w2": (hidden, outputs), "b2": (outputs,)}
    return {name: torch.randn(shape, generator=generator, dtype=torch.float64)
            for name, shape in shapes.items()}


def sigmoid_network_forward(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor):
    # w_ij connects unit i to unit j, as in the notes: w1 is (inputs, hidden), w2 is (hidden, outputs).
    hidden = torch.sigmoid(x @ w1 + b1)
    return hidden, torch.sigmoid(hidden @ w2 + b2)


def backprop_by_hand(x, target, w1, b1, w2, b2) -> dict[str, Tensor]:
    hidden, output = sigmoid_network_forward(x, w1, b1, w2, b2)
    # Output unit k: delta_k = dL/dy_k * y_k (1 - y_k), and dL/dy_k = y_k - t_k for L = 1/2 sum (y - t)^2.
    delta_out = (output - target) * output * (1 - output)  # (outputs,)
    # Hidden unit j: delta_j = sum_k delta_k w_jk * y_j (1 - y_j); row j of w2 @ delta_out is that sum.
    delta_hidden = (w2 @ delta_out) * hidden * (1 - hidden)  # (hidden,)
    # dL/dw_ij = delta_j * x_i: an outer product of what enters the weight and the delta it feeds.
    return {"w1": torch.outer(x, delta_hidden), "b1": delta_hidden,
            "w2": torch.outer(hidden, delta_out), "b2": delta_out}


def backprop_autograd(x, target, w1, b1, w2, b2) -> dict[str, Tensor]:
    parameters = {name: p.clone().requires_grad_() for name, p in
                  {"w1": w1, "b1": b1, "w2": w2, "b2": b2}.items()}
    output = sigmoid_network_forward(x, **parameters)[1]
    (0.5 * ((output - target) ** 2).sum()).backward()  # the notes' squared error; 1/2 cancels the 2
    return {name: p.grad for name, p in parameters.items()}


def noisy_line(n: int = 100, slope: float = 2.0, intercept: float = -1.0, noise: float = 0.3,
               seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=generator, dtype=torch.float64) * 2  # x in [0, 2)
    return x, slope * x + intercept + noise * torch.randn(n, generator=generator, dtype=torch.float64)


def least_squares_line(x: Tensor, y: Tensor) -> tuple[float, float]:
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return slope.item(), (y.mean() - slope * x.mean()).item()


def gradient_descent_line(x: Tensor, y: Tensor, lr: float = 0.1, steps: int = 2000, batch_size: int | None = None,
                          seed: int = 0) -> tuple[float, float, list[float]]:
    # batch_size None: every step sees all the data (gradient descent, deterministic). A number: each step sees
    # that many random points (mini-batch stochastic gradient descent), whose gradient is a noisy estimate of
    # the full one: cheaper steps, a jagged loss, and it keeps hopping around the minimum at a fixed lr.
    generator = torch.Generator().manual_seed(seed)
    m, b, losses = 0.0, 0.0, []
    for _ in range(steps):
        losses.append(((y - (m * x + b)) ** 2).mean().item())  # on all the data, whatever the step sees
        batch = torch.randperm(len(x), generator=generator)[:batch_size] if batch_size else slice(None)
        x_batch, residual = x[batch], y[batch] - (m * x[batch] + b)
        # L = mean (y - (m x + b))^2, so dL/dm = -2 mean(x r) and dL/db = -2 mean(r).
        m, b = m + lr * 2 * (x_batch * residual).mean().item(), b + lr * 2 * residual.mean().item()
    return m, b, losses


# ---- 5. Learning rate and optimizers -------------------------------------------------------------

def load_fashion_mnist(n: int, split: str = "train") -> tuple[Tensor, Tensor]:
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; valid: 'train', 'test'")
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(DEBIAN_FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz") as f:
        f.read(16)  # IDX header: magic, count, rows, cols as big-endian int32
        pixels = np.frombuffer(f.read(n * 28 * 28), dtype=np.uint8)
    with gzip.open(DEBIAN_FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz") as f:
        f.read(8)  # magic, count
        labels = np.frombuffer(f.read(n), dtype=np.uint8)
    images = torch.tensor(pixels, dtype=torch.float32).view(n, 28 * 28) / 255  # (n, 784) in [0, 1]
    return images, torch.tensor(labels, dtype=torch.long)


# Full-batch gradient descent on 2000 images, 100 steps: 1e-4 barely moves the loss; 10 overshoots: the loss jumps
# from 2.3 to ~200 within 5 steps and after 100 is still several times where it started (cross-entropy grows only
# linearly in the logits, so it stays finite and comes down again, slowly). Divergence proper: DIVERGING_LR below.
LEARNING_RATES = {"too small": 1e-4, "good": 0.1, "too large": 10.0}


def train_softmax_regression(images: Tensor, labels: Tensor, lr: float, steps: int = 100,
                             seed: int = 0) -> tuple[nn.Linear, list[float]]:
    torch.manual_seed(seed)
    model = nn.Linear(images.shape[1], 10)  # (784,) pixels -> 10 class logits
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return model, fit(model, images, labels, F.cross_entropy, optimizer, steps)


def elongated_bowl(p: Tensor) -> Tensor:
    # Curvature 1 along x and 100 along y; minimum 0 at (0, 0). Plain gradient descent must keep
    # lr < 2/100 or it diverges along y, and with such a small step it crawls along x.
    return 0.5 * (p[..., 0] ** 2 + 100 * p[..., 1] ** 2)


BOWL_START = (-4.0, 1.0)
# Along y a gradient step multiplies y by (1 - 100 lr): above lr = 2/100 that factor is below -1, so y flips sign
# and grows every step and the loss grows without bound: divergence. 0.021 gives -1.1 a step, 1.1^100 ~ 1.4e4.
DIVERGING_LR = 0.021
OPTIMIZERS = {  # name -> (class, settings) for optimizer_path; lr picked per method, not tuned hard
    # The bowl is an exact loss, no data to sample, so "SGD" here is plain, deterministic gradient descent.
    "SGD": (torch.optim.SGD, {"lr": 0.018}),  # just under the 2/100 stability limit
    "SGD+momentum": (torch.optim.SGD, {"lr": 0.018, "momentum": 0.8}),
    # Nesterov's look-ahead lowers the stability limit: along y (curvature 100) lr * 100 must stay below
    # 2 (1 + mu) / (1 + 2 mu) = 1.38 at mu = 0.8 (momentum's limit is 2 (1 + mu) = 3.6): lr 0.018 diverges.
    "SGD+Nesterov": (torch.optim.SGD, {"lr": 0.012, "momentum": 0.8, "nesterov": True}),
    # RMSprop steps ~lr in each coordinate whatever the curvature, once its mean square has warmed up (the first
    # step, from a mean square of 0, is lr / sqrt(1 - alpha) = 10 lr with the default alpha 0.99).
    "RMSprop": (torch.optim.RMSprop, {"lr": 0.05}),
    "Adam": (torch.optim.Adam, {"lr": 0.3}),
}


def optimizer_path(loss_fn, start: tuple[float, float], optimizer_class, settings: dict,
                   steps: int) -> Tensor:
    point = torch.tensor(start, requires_grad=True)
    optimizer = optimizer_class([point], **settings)
    path = [point.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(point).backward()
        optimizer.step()
        path.append(point.detach().clone())
    return torch.stack(path)  # (steps + 1, 2)


def update_rules_path(name: str, loss_fn, start: tuple[float, float], settings: dict, steps: int) -> Tensor:
    """optimizer_path with each optimizer's update written out (torch's defaults where `settings` names none):
      SGD        w -= lr g
      momentum   v = mu v + g;                         w -= lr v        (v: past gradients, summed with weights mu^k)
      Nesterov   v = mu v + g;                         w -= lr (g + mu v)  (a look one step ahead along v)
      RMSprop    s = alpha s + (1 - alpha) g^2;        w -= lr g / (sqrt(s) + eps)
      Adam       m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, bias-corrected m / (1 - b1^t), v / (1 - b2^t);
                 w -= lr m_hat / (sqrt(v_hat) + eps)"""
    lr, mu = settings["lr"], settings.get("momentum", 0.0)
    alpha, (b1, b2), eps = 0.99, (0.9, 0.999), 1e-8
    w = torch.tensor(start, dtype=torch.float64)
    m, v, path = torch.zeros_like(w), torch.zeros_like(w), [w.clone()]
    for t in range(1, steps + 1):
        point = w.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss_fn(point), point)
        if name == "Adam":
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
            w = w - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        elif name == "RMSprop":
            v = alpha * v + (1 - alpha) * g ** 2
            w = w - lr * g / (v.sqrt() + eps)
        else:  # SGD, with momentum mu (0: plain); torch's first step sets v = g
            m = mu * m + g
            w = w - lr * (g + mu * m if settings.get("nesterov") else m)
        path.append(w.clone())
    return torch.stack(path)  # (steps + 1, 2)


# Weight decay under Adam. Two weights start at 1; the data's gradient on them flips sign every step (what
# mini-batch noise does near a minimum) and is 10,000 times larger on the first. On average almost only the decay
# moves them (under SGD the decay also acts between each push and the pull after it, a net lr * lr * wd * 10 per
# pair). Adam(weight_decay=...) adds the L2 gradient wd * w to the data's before Adam divides by the gradients'
# running RMS, so the weight with large gradients is barely decayed; AdamW multiplies each weight by
# (1 - lr * wd) every step, outside Adam's scaling. With plain SGD the two are the same update.
NOISE_GRADIENT_SCALES = torch.tensor([10.0, 0.001])
DECAY_SETTINGS = {"lr": 0.01, "weight_decay": 1.0}  # AdamW: x 0.99 per step, 0.99^100 = 0.366 after 100 steps
DECAY_OPTIMIZERS = {"Adam + L2": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD + L2": torch.optim.SGD}


def weights_under_decay(optimizer_class, steps: int = 100) -> Tensor:
    signs = itertools.cycle([1.0, -1.0])

    def noise_loss(w: Tensor) -> Tensor:  # gradient +scales, -scales, +scales, ...
        return next(signs) * (NOISE_GRADIENT_SCALES * w).sum()

    return optimizer_path(noise_loss, (1.0, 1.0), optimizer_class, DECAY_SETTINGS, steps)  # (steps + 1, 2)


# ---- 6. Regularization: dropout on a toy tensor (the rest: notebooks/regularization.ipynb) -------

def dropout_train_and_eval(x: Tensor, p: float = 0.5, draws: int = 10_000,
                           seed: int = 0) -> tuple[Tensor, Tensor]:
    # In training mode each element is zeroed with probability p and the survivors are scaled by 1 / (1 - p),
    # so the expected output is x; in evaluation mode nn.Dropout is the identity, with no correction needed.
    torch.manual_seed(seed)
    dropout = nn.Dropout(p)
    many = dropout(x.expand(draws, *x.shape))  # (draws, *x.shape): independent masks
    return many, dropout.eval()(x)


# ---- 7. Convolution ------------------------------------------------------------------------------

EDGE_IMAGE = torch.tensor([[10.0] * 3 + [0.0] * 3] * 6)  # (6, 6): bright left half, dark right half
VERTICAL_EDGE_FILTER = torch.tensor([[1.0, 0.0, -1.0]] * 3)  # (3, 3): left column minus right column
POOLING_EXAMPLE = torch.tensor([[1.0, 3, 2, 1], [2, 9, 1, 1], [1, 3, 2, 3], [5, 6, 1, 2]])  # (4, 4)


def conv_output_size(n: int, f: int, padding: int = 0, stride: int = 1, dilation: int = 1) -> int:
    span = dilation * (f - 1) + 1  # a dilated f x f filter covers this many pixels a side (taps d apart)
    return (n + 2 * padding - span) // stride + 1


def convolve(image: Tensor, kernel: Tensor, padding: int = 0, stride: int = 1) -> Tensor:
    # One filter over a (H, W) or (C, H, W) image; the filter spans every input channel, (C, f, f),
    # so the result has one channel whatever C is. conv2d wants batch and channel axes: (1, C, H, W).
    if image.dim() == 2:
        image, kernel = image[None], kernel[None]
    return F.conv2d(image[None], kernel[None], padding=padding, stride=stride)[0, 0]  # (H', W')


def cross_correlate_by_hand(image: Tensor, kernel: Tensor) -> Tensor:
    # What conv2d computes: slide the (unflipped) filter and sum the elementwise products.
    f = kernel.shape[-1]
    rows, cols = conv_output_size(image.shape[-2], f), conv_output_size(image.shape[-1], f)
    return torch.tensor([[(image[..., r:r + f, c:c + f] * kernel).sum().item() for c in range(cols)]
                         for r in range(rows)])


def small_cnn(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(  # sizes for a 28x28 input
        nn.Conv2d(in_channels, 8, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8 x 14 x 14
        nn.Conv2d(8, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 7 x 7
        nn.Conv2d(16, 32, kernel_size=3), nn.ReLU(),  # 32 x 5 x 5: no padding, 7 - 3 + 1
        nn.Flatten(), nn.Linear(32 * 5 * 5, num_classes),
    )


def layer_shapes(model: nn.Sequential, x: Tensor) -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("input", tuple(x.shape))]
    for layer in model:
        x = layer(x)
        shapes.append((type(layer).__name__, tuple(x.shape)))
    return shapes


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_parameter_count(in_channels: int, out_channels: int, f: int) -> int:
    # Each of the K = out_channels filters is f x f x in_channels weights plus one bias, whatever the image size.
    return out_channels * (f * f * in_channels + 1)



def _side(value) -> int:
    return value[0] if isinstance(value, tuple) else value  # square kernels, strides and dilations: (3, 3) -> 3


def receptive_fields(model: nn.Module) -> list[tuple[str, int, int]]:
    """(layer, receptive field, jump) after each convolution and pooling of `model`, in order. The receptive field
    is the side of the input window one output unit sees; the jump, how many input pixels apart neighbouring
    units' windows start. A layer of kernel f, stride s and dilation d (taps d pixels apart) widens the window by
    (f - 1)·d jumps, then multiplies the jump by s; ReLU, batch norm and dropout see one value and change neither."""
    field, jump, rows = 1, 1, []
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            f, s, d = _side(layer.kernel_size), _side(layer.stride), _side(getattr(layer, "dilation", 1))
            field, jump = field + (f - 1) * d * jump, jump * s
            rows.append((type(layer).__name__, field, jump))
    return rows


def measured_receptive_field(features: nn.Module, image_size: int, in_channels: int = 1) -> tuple[int, int]:
    """The receptive field found by experiment, (height, width): `features` with every weight 1 and every bias 0,
    so a lit pixel can only raise what it reaches (through ReLU and max pooling alike), fed one image per input
    pixel with only that pixel lit; the box of the pixels that reach the centre unit of the last feature map."""
    probe = copy.deepcopy(features).eval()  # eval: batch norm with its fresh running statistics, about identity
    n = image_size
    with torch.no_grad():
        for name, parameter in probe.named_parameters():
            parameter.fill_(0.0 if name.endswith("bias") else 1.0)
        images = torch.eye(n * n).reshape(n * n, 1, n, n).expand(-1, in_channels, -1, -1)  # image k lights pixel k
        maps = probe(images)  # (n*n, C, h, w)
        reached = maps[:, 0, maps.shape[-2] // 2, maps.shape[-1] // 2] > 0  # (n*n,) which pixels reach the unit
    rows, columns = reached.reshape(n, n).nonzero(as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(columns.max() - columns.min() + 1)


# ---- 8. Width and depth; the plain RNN and the LSTM's gates --------------------------------------

def mlp(in_features: int, width: int, depth: int, out_features: int) -> nn.Sequential:
    layers, size = [], in_features
    for _ in range(depth):  # depth = number of hidden layers, width = units in each
        layers += [nn.Linear(size, width), nn.Tanh()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, out_features))


def mlp_parameter_count(in_features: int, width: int, depth: int, out_features: int) -> int:
    # (inputs + 1 bias) weights into every unit, layer by layer; depth 0 is one linear layer (no hidden units).
    if depth == 0:
        return (in_features + 1) * out_features
    return (in_features + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * out_features


def fit_wiggly_curve(width: int, depth: int, steps: int = 500, seed: int = 0) -> tuple[float, nn.Module]:
    # The MSE after `steps` Adam steps: within a fixed budget, how fast a shape learns, not only what it can represent.
    torch.manual_seed(seed)
    x = torch.linspace(-1, 1, 128)[:, None]  # (128, 1)
    y = torch.sin(3 * torch.pi * x)  # three full waves (six turns) on [-1, 1]: a few units cannot bend that often
    model = mlp(1, width, depth, 1)
    return fit(model, x, y, F.mse_loss, torch.optim.Adam(model.parameters(), lr=0.01), steps)[-1], model


def recurrent_block(cell: nn.RNNBase, k: int, x: Tensor, h: Tensor) -> Tensor:
    # W x + U h + b for block k of the stacked rows (PyTorch keeps two biases; b_ih + b_hh is the notes' b).
    rows = slice(k * cell.hidden_size, (k + 1) * cell.hidden_size)
    return (x @ cell.weight_ih_l0[rows].T + cell.bias_ih_l0[rows]
            + h @ cell.weight_hh_l0[rows].T + cell.bias_hh_l0[rows])


def rnn_step_by_hand(rnn: nn.RNN, x: Tensor, h: Tensor) -> Tensor:
    return torch.tanh(recurrent_block(rnn, 0, x, h))  # h_t = tanh(W x_t + U h_{t-1} + b): one block of rows


def rnn_by_hand(rnn: nn.RNN, inputs: Tensor) -> Tensor:
    h, outputs = torch.zeros(rnn.hidden_size), []  # nn.RNN also starts from h_0 = 0
    for x in inputs:  # (T, input)
        h = rnn_step_by_hand(rnn, x, h)
        outputs.append(h)
    return torch.stack(outputs)  # (T, hidden)


def lstm_step_by_hand(lstm: nn.LSTM, x: Tensor, h: Tensor, c: Tensor):
    def gate(k: int, activation) -> Tensor:
        # PyTorch stacks the four gates' rows as i, f, g, o: weight_ih_l0 is (4 * hidden, input).
        return activation(recurrent_block(lstm, k, x, h))

    # The candidate is a plain RNN step; the gates decide how much of it enters the cell state.
    gates = {"update (input) gate": gate(0, torch.sigmoid), "forget gate": gate(1, torch.sigmoid),
             "candidate": gate(2, torch.tanh), "output gate": gate(3, torch.sigmoid)}
    # Cell state: keep what the forget gate lets through, add what the update gate lets in.
    c = gates["forget gate"] * c + gates["update (input) gate"] * gates["candidate"]
    h = gates["output gate"] * torch.tanh(c)
    return h, c, gates


# Why the LSTM. Backpropagating from step T to step t multiplies T - t Jacobians. In a plain RNN each is diag(tanh')
# U. It surely shrinks the gradient when U's largest singular value times max tanh' (1) is below 1 (Pascanu et al.
# 2013); rnn_and_lstm's U has 1.12, but its spectral radius is 0.59 and tanh' is mostly well below 1, so in practice
# the gradient reaching earlier inputs shrinks geometrically (vanishes: measured below, not guaranteed); with a
# larger U it can instead grow geometrically (explodes), which is why configs/model/lstm.yaml clips the gradient
# norm (trainer.gradient_clip_val). The LSTM's cell state is updated additively, c_t = f * c_{t-1} + i * g, so along
# it each step back multiplies the gradient by the forget gate alone: near 1, it carries the gradient a long way.
# PyTorch's initialisation leaves f ~ sigmoid(0) = 0.5, only a little better than the RNN (x0.6 against x0.55 a
# step back, measured below); a forget-gate bias of 1 (f ~ 0.73 at
# the start) is the usual remedy (models/lstm.py open_forget_gates, `model.net.forget_bias=1.0`; this repo's
# Shakespeare model learned slower with it: see there).

def gradient_by_steps_back(network: nn.RNNBase, steps: int = 50, seed: int = 0) -> Tensor:
    # |d loss / d x_t| for a loss on the last output only (the sum of its units); index k is k steps back.
    torch.manual_seed(seed)
    inputs = torch.randn(steps, 1, network.input_size, requires_grad=True)  # (T, batch 1, input)
    outputs, _ = network(inputs)  # (T, 1, hidden)
    (gradient,) = torch.autograd.grad(outputs[-1].sum(), inputs)
    return gradient.norm(dim=(1, 2)).flip(0)  # (T,)


def rnn_and_lstm(input_size: int = 4, hidden_size: int = 32, seed: int = 0) -> dict[str, nn.RNNBase]:
    torch.manual_seed(seed)
    rnn, lstm = nn.RNN(input_size, hidden_size), nn.LSTM(input_size, hidden_size)
    # The two LSTMs differ only in the forget gate's bias.
    return {"plain RNN": rnn, "LSTM, PyTorch's init": lstm,
            "LSTM, forget-gate bias 1": open_forget_gates(copy.deepcopy(lstm))}
