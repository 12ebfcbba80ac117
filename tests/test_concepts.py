"""The numbers of the course notes' worked examples, one test (or a few) per item of concepts.ipynb."""

import copy
import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from data import DEBIAN_FASHION_MNIST
from models import course
from models.cnn import ConvNet

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "concepts.ipynb"
needs_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.exists(), reason=f"Fashion-MNIST not found at {DEBIAN_FASHION_MNIST}")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Every tensor here is tiny; on a shared 2-core CPU extra intra-op threads made a 1 s fit take 40 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- 1. One neuron ----


def test_rain_neuron_is_and_and_its_line_is_the_notes_line():
    x = course.BOOLEAN_INPUTS
    assert torch.equal(course.neuron(x, course.AND_WEIGHTS, course.AND_BIAS), course.AND_TARGETS)
    assert torch.equal(course.neuron(x, course.OR_WEIGHTS, course.OR_BIAS), course.OR_TARGETS)
    # Points on x2 = -4/5 x1 + 6/5 have pre-activation 0: that line is the decision boundary.
    on_line = torch.tensor([[0.0, 1.2], [1.5, 0.0], [1.0, 0.4]])
    torch.testing.assert_close(on_line @ course.AND_WEIGHTS + course.AND_BIAS, torch.zeros(3))


def test_no_single_neuron_solves_xor():
    grid = torch.linspace(-2, 2, 41)  # steps of 0.1; the same grid does hold an AND and an OR
    x = course.BOOLEAN_INPUTS
    assert course.best_linear_accuracy(x, course.AND_TARGETS, grid) == 1.0
    assert course.best_linear_accuracy(x, course.OR_TARGETS, grid) == 1.0
    assert course.best_linear_accuracy(x, course.XOR_TARGETS, grid) == 0.75
    _, unit = course.train_single_neuron(x, course.XOR_TARGETS)
    # Under cross-entropy the best single neuron gives up: P(y = 1) = 0.5 for all four points.
    torch.testing.assert_close(torch.sigmoid(unit(x)).detach(), torch.full((4, 1), 0.5), atol=1e-3, rtol=0)
    predicted, _ = course.train_single_neuron(x, course.AND_TARGETS)  # same training does learn AND
    assert course.accuracy(predicted, course.AND_TARGETS) == 1.0


def test_fit_records_the_loss_before_the_first_step_and_after_every_step():
    # "after N steps" in the notebooks reads losses[N]: the untrained model's loss first, the trained one's last.
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    model = nn.Linear(3, 1)
    start = F.mse_loss(model(x), y).item()
    losses = course.fit(model, x, y, F.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1), 5)
    assert len(losses) == 6 and losses[0] == start
    assert losses[-1] == F.mse_loss(model(x), y).item() < losses[-2]


def test_one_hidden_layer_of_two_units_solves_xor():
    assert torch.equal(course.xor_by_hand(course.BOOLEAN_INPUTS), course.XOR_TARGETS)
    mlp, losses = course.train_xor_mlp()
    predicted = (mlp(course.BOOLEAN_INPUTS).squeeze(-1) > 0).float()
    assert course.accuracy(predicted, course.XOR_TARGETS) == 1.0
    assert losses[-1] < 0.01 < losses[0]


def test_linear_layers_without_activation_collapse_to_one():
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Linear(8, 9), nn.Linear(9, 4))
    single = course.collapse_linear_stack(stack)
    assert tuple(single.weight.T.shape) == (8, 4)  # the notes' (8x9)(9x4) = 8x4, x as a row vector
    x = torch.randn(5, 8)
    torch.testing.assert_close(single(x), stack(x), atol=1e-6, rtol=0)
    with_relu = nn.Sequential(stack[0], nn.ReLU(), stack[1])  # a non-linearity breaks the collapse
    assert not torch.allclose(single(x), with_relu(x), atol=1e-3)


# ---- 2. Activations ----


@pytest.mark.parametrize("name", list(course.ACTIVATIONS))
def test_notes_derivative_matches_autograd_and_finite_differences(name):
    function, derivative = course.ACTIVATIONS[name]
    x = torch.linspace(-4, 4, 80, dtype=torch.float64)  # an even count skips x = 0, where relu/step kink
    torch.testing.assert_close(derivative(x), course.autograd_derivative(function, x), atol=1e-12, rtol=0)
    # Independent of autograd (which gives the step 0 by construction): the slope measured from the values.
    # |x| >= 0.05 here, so the steps of 1e-6 never cross a kink; for the step both sides are equal: slope 0.
    h = 1e-6
    torch.testing.assert_close(derivative(x), (function(x + h) - function(x - h)) / (2 * h), atol=1e-8, rtol=0)


def test_step_network_gets_no_gradient_to_learn_from():
    # The notes' reason a step network cannot be trained by gradient descent: every weight's gradient is 0.
    weights = torch.tensor([0.3, -0.2], requires_grad=True)
    loss = course.mse(course.neuron(course.BOOLEAN_INPUTS, weights, 0.1), course.XOR_TARGETS)
    loss.backward()
    assert loss.item() > 0 and weights.grad.tolist() == [0.0, 0.0]  # wrong, and nothing says which way to move
    sigmoid_weights = weights.detach().clone().requires_grad_()  # the same neuron with a sigmoid does get one
    course.mse(course.neuron(course.BOOLEAN_INPUTS, sigmoid_weights, 0.1, torch.sigmoid), course.XOR_TARGETS).backward()
    assert sigmoid_weights.grad.abs().min() > 1e-3


def test_activation_values():
    zero = torch.zeros(1)
    assert course.ACTIVATIONS["sigmoid"][1](zero).item() == 0.25  # the sigmoid's steepest slope
    assert course.ACTIVATIONS["tanh"][1](zero).item() == 1.0
    leaky, leaky_slope = course.ACTIVATIONS["leaky_relu"]
    negative = torch.tensor([-3.0, -0.5])
    assert torch.equal(torch.relu(negative), torch.zeros(2)) and course.ACTIVATIONS["relu"][1](negative).sum() == 0
    torch.testing.assert_close(leaky(negative), course.LEAKY_SLOPE * negative)  # a slope where ReLU has none
    torch.testing.assert_close(leaky_slope(negative), torch.full((2,), course.LEAKY_SLOPE))
    assert course.step(torch.tensor([-1.0, 0.0, 2.0])).tolist() == [0.0, 0.0, 1.0]


def test_the_leak_and_the_slope_at_the_kink_are_the_notes_values():
    # Pinned: the leak is 0.1 (not torch's 0.01); at x = 0 ReLU and leaky ReLU take the left slope, as autograd does.
    assert course.ACTIVATIONS["leaky_relu"][0](torch.tensor([-2.0])).item() == pytest.approx(-0.2)
    zero = torch.zeros(1)
    for name in ("relu", "leaky_relu"):
        function, derivative = course.ACTIVATIONS[name]
        assert derivative(zero).item() == course.autograd_derivative(function, zero).item() < 1, name


def test_saturation_counts_outputs_within_one_percent_of_the_bound():
    # Pinned: "saturated" is |a| > 0.99 (slope ~0): N(0, 1) weights and tanh leave 87% of the last layer there.
    assert course.activation_scales(*course.INITIALISATIONS["N(0, 1), tanh"])[1] == pytest.approx(0.865, abs=0.01)


def test_initialisation_keeps_or_loses_the_signal_through_20_layers():
    scales = {name: course.activation_scales(*spec) for name, spec in course.INITIALISATIONS.items()}
    assert scales["N(0, 1), tanh"][1] > 0.8  # 87% of the last layer's units saturated at +-1
    assert scales["He, ReLU"][1] is None  # ReLU is not bounded: it never saturates above 0...
    assert 0.4 < scales["He, ReLU"][2] < 0.6  # ...its off side is exactly 0 for about half the units (0.47)
    he, xavier_relu = scales["He, ReLU"][0], scales["Xavier, ReLU"][0]
    assert 0.3 < he[-1] / he[0] < 3  # He keeps ReLU's signal (0.83 -> 0.76)
    assert xavier_relu[-1] < 0.01 and scales["nn.Linear default, ReLU"][0][-1] < 1e-6  # halved, or worse, per layer
    xavier_tanh = scales["Xavier, tanh"]
    assert xavier_tanh[0][-1] > 0.05 and xavier_tanh[1] == 0  # fades slowly (0.63 -> 0.15), never saturates


def test_softmax_example():
    a = torch.tensor([-0.21, 0.47, 1.72])
    total, probabilities = course.softmax_by_hand(a)
    assert total.item() == pytest.approx(7.995, abs=5e-4)
    assert probabilities.round(decimals=1).tolist() == pytest.approx([0.1, 0.2, 0.7])
    torch.testing.assert_close(probabilities, torch.softmax(a, dim=-1))
    torch.testing.assert_close(course.stable_softmax(a), probabilities)


def test_softmax_derivative_and_the_cross_entropy_gradient():
    a = torch.tensor([-0.21, 0.47, 1.72], dtype=torch.float64)
    s = torch.softmax(a, -1)
    jacobian = torch.autograd.functional.jacobian(lambda scores: torch.softmax(scores, -1), a)
    torch.testing.assert_close(course.softmax_jacobian(s), jacobian)
    assert (course.softmax_jacobian(s).diagonal() > 0).all() and (course.softmax_jacobian(s).sum(0).abs() < 1e-12).all()
    # Through softmax and cross-entropy together the gradient is simply p - onehot(true class).
    scores = a.clone().requires_grad_()
    F.cross_entropy(scores[None], torch.tensor([0])).backward()
    torch.testing.assert_close(scores.grad, s - torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


# ---- 3. Losses ----


def test_losses_match_formula_and_torch():
    predicted, targets = torch.tensor([2.5, 0.0, 2.1]), torch.tensor([3.0, -0.5, 2.0])
    assert course.mse(predicted, targets).item() == pytest.approx(0.17)  # (0.25 + 0.25 + 0.01) / 3
    torch.testing.assert_close(course.mse(predicted, targets), F.mse_loss(predicted, targets))

    p, y = torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1.0, 0.0, 1.0])
    assert course.binary_cross_entropy(p, y).item() == pytest.approx(0.2798, abs=1e-4)  # -(ln.9+ln.8+ln.6)/3
    torch.testing.assert_close(course.binary_cross_entropy(p, y), F.binary_cross_entropy(p, y))

    logits, classes = torch.tensor([[-0.21, 0.47, 1.72], [1.0, 0.0, 0.0]]), torch.tensor([2, 0])
    first_row = course.categorical_cross_entropy(logits[:1], classes[:1]).item()
    assert first_row == pytest.approx(0.359, abs=1e-3)  # -ln 0.70, the softmax example's winner
    both_rows = course.categorical_cross_entropy(logits, classes)  # each row normalised on its own
    torch.testing.assert_close(both_rows, F.cross_entropy(logits, classes))
    torch.testing.assert_close(course.cross_entropy_from_logits(logits, classes), both_rows)


def test_losses_from_logits_survive_confident_outputs():
    logits = torch.tensor([[1000.0, 0.0, 0.0]] * 2)  # (2, 3): exp(1000) overflows float32
    classes = torch.tensor([0, 1])  # right with a margin of 1000, and wrong by 1000
    assert course.softmax_by_hand(logits)[1].isnan().any()  # inf / inf
    per_row = [course.categorical_cross_entropy(logits[i:i + 1], classes[i:i + 1]).item() for i in range(2)]
    assert per_row[0] != per_row[0] and per_row[1] == float("inf")  # NaN, and -ln 0
    torch.testing.assert_close(course.stable_softmax(logits), torch.softmax(logits, -1))
    torch.testing.assert_close(course.stable_softmax(logits[0]), torch.tensor([1.0, 0.0, 0.0]))
    from_logits = course.cross_entropy_from_logits(logits, classes)
    torch.testing.assert_close(from_logits, torch.tensor(500.0))  # (0 + 1000) / 2
    torch.testing.assert_close(from_logits, F.cross_entropy(logits, classes))
    torch.testing.assert_close(F.nll_loss(F.log_softmax(logits, -1), classes), F.cross_entropy(logits, classes))
    # A Softmax layer in the network would make F.cross_entropy apply softmax twice: the loss of the wrong row is
    # capped at ln(e + 2) = 1.55 however wrong it is.
    torch.testing.assert_close(F.cross_entropy(torch.softmax(logits, -1)[1:], classes[1:]),
                               torch.tensor(1.5514), atol=1e-4, rtol=0)

    z, y = torch.tensor([20.0, -3.0, 0.5]), torch.tensor([0.0, 0.0, 1.0])  # sigmoid(20) is 1.0 in float32
    assert course.binary_cross_entropy(torch.sigmoid(z), y).item() == float("inf")  # ln(1 - 1) = -inf
    assert course.binary_cross_entropy(torch.sigmoid(z[:1]), 1 - y[:1]).isnan()  # right, but 0 * ln(1 - 1) = NaN
    assert F.binary_cross_entropy(torch.sigmoid(z[:1]), y[:1]).item() == 100.0  # torch clamps ln at -100
    torch.testing.assert_close(course.binary_cross_entropy_from_logits(z[:1], y[:1]), torch.tensor(20.0))
    torch.testing.assert_close(course.binary_cross_entropy_from_logits(z, y), F.binary_cross_entropy_with_logits(z, y))


# ---- 4. Backpropagation ----


@pytest.mark.parametrize("sizes", [(2, 3, 1), (2, 2, 2)])
def test_backprop_by_hand_matches_autograd(sizes):
    parameters = course.sigmoid_network_parameters(*sizes)
    x = torch.tensor([0.5, -1.0], dtype=torch.float64)
    target = torch.ones(sizes[2], dtype=torch.float64)
    by_hand = course.backprop_by_hand(x, target, **parameters)
    by_autograd = course.backprop_autograd(x, target, **parameters)
    for name in parameters:
        assert by_hand[name].shape == parameters[name].shape
        torch.testing.assert_close(by_hand[name], by_autograd[name], atol=1e-12, rtol=0)
    assert by_hand["w1"].abs().max() > 1e-4  # the gradients are not trivially zero


def test_gradient_descent_reaches_least_squares_line():
    x, y = course.noisy_line()  # y = 2 x - 1 + noise
    m_exact, b_exact = course.least_squares_line(x, y)
    m, b, losses = course.gradient_descent_line(x, y)
    assert m == pytest.approx(m_exact, abs=1e-3) and b == pytest.approx(b_exact, abs=1e-3)
    assert m_exact == pytest.approx(2.0, abs=0.15) and b_exact == pytest.approx(-1.0, abs=0.15)
    assert losses[-1] < 0.1 < losses[0]  # ends at the noise level, 0.3^2 = 0.09


def test_one_gradient_descent_step_on_the_line_is_minus_lr_times_the_mse_gradient():
    # Pinned: dL/dm = -2 mean(x r) and dL/db = -2 mean(r), the factor 2 included, as autograd computes them.
    x, y = course.noisy_line()
    m, b, _ = course.gradient_descent_line(x, y, lr=0.1, steps=1)
    line = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # (m, b) at the start, 0 and 0
    (gradient,) = torch.autograd.grad(((y - (line[0] * x + line[1])) ** 2).mean(), line)
    assert [m, b] == pytest.approx((-0.1 * gradient).tolist(), abs=1e-12)


def test_mini_batches_make_gradient_descent_noisy():
    x, y = course.noisy_line()
    full, mini = course.gradient_descent_line(x, y)[2], course.gradient_descent_line(x, y, batch_size=10)[2]
    lowest = full[-1]  # converged to the least-squares loss
    def rises(losses):
        return sum(later > earlier + 1e-12 for earlier, later in zip(losses, losses[1:]))
    assert rises(full) == 0  # every full-batch step goes downhill
    assert rises(mini) > 500  # 974 of the 1999 steps between 2000 mini-batch losses go up
    last = sum(mini[-500:]) / 500
    assert 1.005 * lowest < last < 1.1 * lowest  # it hovers ~2% above the minimum (1.02-1.03 for seeds 0-2)
    single = course.gradient_descent_line(x, y, batch_size=1)[2]  # stochastic gradient descent proper
    assert sum(single[-500:]) / 500 > 1.1 * last  # one point's gradient is noisier still: ~26% above the minimum


# ---- 5. Learning rate and optimizers ----

@needs_fashion_mnist
def test_learning_rate_too_small_good_too_large_on_fashion_mnist():
    images, labels = course.load_fashion_mnist(2000)
    assert images.shape == (2000, 784) and 0 <= images.min() and images.max() <= 1
    assert labels.unique().tolist() == list(range(10))
    losses = {name: course.train_softmax_regression(images, labels, lr)[1]
              for name, lr in course.LEARNING_RATES.items()}
    start = losses["good"][0]  # same seed, so all three start from the same loss, ~ln 10 = 2.30
    assert start == pytest.approx(2.3, abs=0.1)
    assert losses["too small"][-1] > 0.97 * start  # 100 steps move it by about 1%
    assert losses["good"][-1] < 0.35 * start
    assert not losses["too large"][-1] < 2 * start  # worse than where it began (or not finite)

    model, _ = course.train_softmax_regression(images, labels, course.LEARNING_RATES["good"])
    test_images, test_labels = course.load_fashion_mnist(1000, split="test")
    assert course.accuracy(model(test_images).argmax(-1), test_labels) > 0.7  # chance is 0.1


@needs_fashion_mnist
def test_load_fashion_mnist_test_split_reads_the_t10k_files():
    # Pinned: split="test" is the 10,000 test images, not the training ones (their first ten labels differ).
    assert course.load_fashion_mnist(10, split="test")[1].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert course.load_fashion_mnist(10)[1].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


def test_load_fashion_mnist_rejects_unknown_split():
    with pytest.raises(ValueError, match="valid"):
        course.load_fashion_mnist(10, split="validation")


def test_gradient_descent_diverges_above_two_over_the_curvature():
    path = course.optimizer_path(course.elongated_bowl, course.BOWL_START, torch.optim.SGD,
                                 {"lr": course.DIVERGING_LR}, 100)
    y = path[:, 1]
    torch.testing.assert_close(y[1:] / y[:-1], torch.full((100,), 1 - 100 * course.DIVERGING_LR))  # x (-1.1) a step
    assert course.elongated_bowl(path[100]) > 1e8 * course.elongated_bowl(path[0])  # from 58 to ~1e10


def test_nesterov_has_a_lower_stability_limit_than_momentum():
    # At mu = 0.8 along y (curvature 100): momentum is stable while lr * 100 < 2 (1 + mu) = 3.6, Nesterov while
    # lr * 100 < 2 (1 + mu) / (1 + 2 mu) = 1.38. lr 0.018 (1.8) lies between the two.
    momentum = {"lr": 0.018, "momentum": 0.8}
    settled = course.optimizer_path(course.elongated_bowl, course.BOWL_START, torch.optim.SGD, momentum, 100)
    ahead = course.optimizer_path(course.elongated_bowl, course.BOWL_START, torch.optim.SGD,
                                  {**momentum, "nesterov": True}, 100)
    assert course.elongated_bowl(settled[100]) < 1e-6 and not course.elongated_bowl(ahead[100]) < 1e6


@pytest.mark.parametrize("name", list(course.OPTIMIZERS))
def test_the_update_rules_written_out_are_what_torch_optim_does(name):
    optimizer_class, settings = course.OPTIMIZERS[name]
    by_torch = course.optimizer_path(course.elongated_bowl, course.BOWL_START, optimizer_class, settings, 100)
    by_hand = course.update_rules_path(name, course.elongated_bowl, course.BOWL_START, settings, 100)
    torch.testing.assert_close(by_hand, by_torch.double(), atol=1e-5, rtol=0)  # float32 against float64
    assert (by_hand[1] != by_hand[0]).all()  # it moved


def test_momentum_and_adaptive_optimizers_beat_sgd_on_an_elongated_bowl():
    final = {}
    for name, (optimizer_class, settings) in course.OPTIMIZERS.items():
        path = course.optimizer_path(course.elongated_bowl, course.BOWL_START, optimizer_class, settings, 300)
        final[name] = course.elongated_bowl(path[[100, 300]]).tolist()  # loss after 100 and 300 steps
    assert final["SGD"][0] > 0.1  # from 58: still crawling along the shallow x direction
    for name in final.keys() - {"SGD"}:
        assert final[name][0] < final["SGD"][0] / 100, name
    for name, (_, after_300) in final.items():
        assert after_300 < 1e-3, name  # all reach the minimum eventually


# ---- 7. Convolution ----


def test_vertical_edge_filter_marks_the_edge():
    edges = course.convolve(course.EDGE_IMAGE, course.VERTICAL_EDGE_FILTER)
    assert edges.tolist() == [[0.0, 30.0, 30.0, 0.0]] * 4
    assert torch.equal(course.cross_correlate_by_hand(course.EDGE_IMAGE, course.VERTICAL_EDGE_FILTER), edges)
    assert course.convolve(course.EDGE_IMAGE, course.VERTICAL_EDGE_FILTER, padding=1).shape == (6, 6)
    assert course.convolve(course.EDGE_IMAGE, course.VERTICAL_EDGE_FILTER, stride=2).shape == (2, 2)


@pytest.mark.parametrize("n", [5, 6, 7, 28])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_output_size_formula(n, padding, stride):
    size = course.conv_output_size(n, 3, padding, stride)
    assert course.convolve(torch.zeros(n, n), torch.zeros(3, 3), padding, stride).shape == (size, size)
    for dilation in (2, 3):  # a 3 x 3 filter with taps 2 (3) apart spans 5 (7) pixels
        if n + 2 * padding >= 2 * dilation + 1:
            size = course.conv_output_size(n, 3, padding, stride, dilation)
            out = F.conv2d(torch.zeros(1, 1, n, n), torch.zeros(1, 1, 3, 3), padding=padding, stride=stride,
                           dilation=dilation)
            assert out.shape[-2:] == (size, size)


def test_cross_correlation_by_hand_on_a_non_square_image():
    # Its output size came from the width alone: a tall image gave too few rows, a wide one a RuntimeError.
    tall = torch.arange(35.0).reshape(7, 5)
    for image in (tall, tall.T):
        assert torch.equal(course.cross_correlate_by_hand(image, course.VERTICAL_EDGE_FILTER),
                           course.convolve(image, course.VERTICAL_EDGE_FILTER))


def test_rgb_filter_spans_the_channels():
    rgb, filter_3x3x3 = course.EDGE_IMAGE.expand(3, 6, 6), course.VERTICAL_EDGE_FILTER.expand(3, 3, 3)
    assert course.convolve(rgb, filter_3x3x3).tolist() == [[0.0, 90.0, 90.0, 0.0]] * 4  # 3 channels x 30
    assert torch.equal(course.cross_correlate_by_hand(rgb, filter_3x3x3), course.convolve(rgb, filter_3x3x3))


def test_max_and_average_pooling():
    for n in range(2, 9):  # pooling follows the convolution's size formula: f x f windows, stride s (7 -> 3)
        assert F.max_pool2d(torch.zeros(1, n, n), kernel_size=2).shape[-1] == course.conv_output_size(n, 2, 0, 2)
    assert course.conv_output_size(7, 2, 0, 2) == 3
    pooled = F.max_pool2d(course.POOLING_EXAMPLE[None], kernel_size=2)[0]
    assert pooled.tolist() == [[9.0, 2.0], [6.0, 3.0]]
    averaged = F.avg_pool2d(course.POOLING_EXAMPLE[None], kernel_size=2)[0]
    assert averaged.tolist() == [[3.75, 1.25], [3.75, 2.0]]  # (1 + 3 + 2 + 9) / 4 = 3.75, ...


def test_conv_parameter_count_formula():
    convs = [layer for layer in course.small_cnn() if isinstance(layer, nn.Conv2d)]
    counts = [course.conv_parameter_count(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs]
    assert counts == [course.count_parameters(c) for c in convs] == [80, 1168, 4640]  # 8 x (3 x 3 x 1 + 1), ...
    assert sum(counts) + (32 * 5 * 5 + 1) * 10 == course.count_parameters(course.small_cnn()) == 13_898


def test_receptive_field_formula_matches_the_pixels_that_reach_a_unit():
    dilated = nn.Sequential(nn.Conv2d(1, 1, 3, padding=2, dilation=2), nn.ReLU(),
                            nn.Conv2d(1, 1, 3, padding=4, dilation=4))
    strided = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, stride=2), nn.Conv2d(1, 1, 3, padding=1))
    stacked = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(3)])  # three 3x3 see one 7x7's window
    cases = [(course.small_cnn()[:-2], 18), (ConvNet(1, 10, (28, 28)).features, 10), (dilated, 1 + 2 * 2 + 2 * 4),
             (strided, 3 + 2 * 2), (stacked, 7)]
    for features, field in cases:
        assert course.receptive_fields(features)[-1][1] == field
        assert course.measured_receptive_field(features, 28) == (field, field)
    assert [jump for _, _, jump in course.receptive_fields(course.small_cnn())] == [1, 2, 2, 4, 4]  # pools double it
    deep = ConvNet(1, 10, (28, 28), widths=(32, 64, 128), convs_per_block=2).features
    assert course.receptive_fields(deep)[-1][1] == 36  # wider than the image: the centre unit sees all of it
    assert course.measured_receptive_field(deep, 28) == (28, 28)


def test_feature_maps_shrink_while_channels_grow():
    shapes = course.layer_shapes(course.small_cnn(), torch.zeros(1, 1, 28, 28))
    assert [shape for _, shape in shapes] == [
        (1, 1, 28, 28), (1, 8, 28, 28), (1, 8, 28, 28), (1, 8, 14, 14),
        (1, 16, 14, 14), (1, 16, 14, 14), (1, 16, 7, 7),
        (1, 32, 5, 5), (1, 32, 5, 5), (1, 800), (1, 10),
    ]


def test_alexnet_and_vgg16_parameter_counts():
    alexnet = course.count_parameters(torchvision.models.alexnet(weights=None))
    assert alexnet == pytest.approx(61.1e6, abs=1e6)  # the notes round it to ~60M
    vgg16 = course.count_parameters(torchvision.models.vgg16(weights=None))
    assert vgg16 == pytest.approx(138.4e6, abs=1e6)


# ---- 8. Width, depth and the LSTM ----


@pytest.mark.parametrize("width, depth", [(2, 1), (16, 1), (16, 3), (64, 2), (16, 0)])
def test_mlp_parameter_count_formula(width, depth):
    model = course.mlp(784, width, depth, 10)
    assert course.count_parameters(model) == course.mlp_parameter_count(784, width, depth, 10)


def test_wider_and_deeper_fit_a_wiggly_curve_better():
    narrow, wide, wide_and_deep = (course.fit_wiggly_curve(w, d)[0] for w, d in [(2, 1), (16, 1), (16, 3)])
    assert narrow > wide > wide_and_deep
    assert narrow > 0.3 and wide_and_deep < 0.01  # sin(3 pi x) has variance 0.5
    # At equal size and 500 steps depth wins: 200 x 1 has 601 parameters, 16 x 3 has 593. Seeds 0-4: MSE 0.04-0.10
    # against 0.00005-0.0015, 58 to 1,000 times lower.
    assert course.mlp_parameter_count(1, 200, 1, 1) == 601 and course.mlp_parameter_count(1, 16, 3, 1) == 593
    assert course.fit_wiggly_curve(200, 1)[0] > 10 * wide_and_deep
    # Speed of learning more than capacity: given 5,000 steps instead of 500, one layer of 16 fits the curve too. Seeds
    # 0-4: MSE 4.8e-5 to 5.1e-4 (590 to 4,800 times below its 500-step MSE; three layers reached 5.6e-5 to 1.3e-3 in
    # 500, so which of the two is lower depends on the seed).
    longer = course.fit_wiggly_curve(16, 1, steps=5000)[0]
    assert longer < 1e-3 and longer < wide / 100


def test_lstm_gates_by_hand_match_nn_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(input_size=3, hidden_size=4)
    x, h, c = torch.randn(3), torch.randn(4), torch.randn(4)
    output, (h_torch, c_torch) = lstm(x[None, None], (h[None, None], c[None, None]))  # (T=1, B=1, .)
    h_hand, c_hand, gates = course.lstm_step_by_hand(lstm, x, h, c)
    torch.testing.assert_close(h_hand, h_torch[0, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(c_hand, c_torch[0, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(h_hand, output[0, 0], atol=1e-6, rtol=0)
    for name in ("forget gate", "update (input) gate", "output gate"):
        assert 0 < gates[name].min() and gates[name].max() < 1
    assert gates["candidate"].abs().max() < 1


def test_what_each_lstm_gate_does():
    # nn.LSTM itself, with one gate forced shut (bias -100: sigmoid 0) or open (+100: sigmoid 1).
    torch.manual_seed(0)
    lstm = nn.LSTM(input_size=3, hidden_size=4)
    x, h, c = torch.randn(1, 1, 3), torch.randn(1, 1, 4), torch.randn(1, 1, 4)
    rows = {"input": 0, "forget": 1, "output": 3}  # PyTorch's order of the four blocks: i, f, g, o

    def step(cell_state, **bias):
        forced = copy.deepcopy(lstm)
        with torch.no_grad():
            for gate, value in bias.items():
                forced.bias_ih_l0[4 * rows[gate]:4 * rows[gate] + 4] += value
        _, (h_next, c_next) = forced(x, (h, cell_state))
        return h_next, c_next

    _, c_forgot = step(c, forget=-100)
    torch.testing.assert_close(c_forgot, step(torch.zeros_like(c), forget=-100)[1])  # forget shut: old c erased
    _, c_blocked = step(c, input=-100)
    _, c_kept = step(c, input=-100, forget=100)
    torch.testing.assert_close(c_kept, c)  # forget open, input shut: the cell state carried exactly
    with torch.no_grad():  # input shut alone: c only scaled by the forget gate, f * c
        forget = torch.sigmoid(course.recurrent_block(lstm, rows["forget"], x[0, 0], h[0, 0]))
    torch.testing.assert_close(c_blocked[0, 0], forget * c[0, 0])
    assert not torch.allclose(c_blocked, c)
    h_hidden, c_hidden = step(c, output=-100)
    assert h_hidden.abs().max() < 1e-30 and c_hidden.abs().max() > 0.1  # output shut: h = 0, the cell goes on


def test_rnn_by_hand_matches_nn_rnn():
    torch.manual_seed(0)
    rnn, inputs = nn.RNN(input_size=3, hidden_size=4), torch.randn(6, 3)  # a sequence of 6 steps
    output, h_last = rnn(inputs[:, None])  # (T, B=1, hidden), from h_0 = 0
    by_hand = course.rnn_by_hand(rnn, inputs)  # (T, hidden)
    torch.testing.assert_close(by_hand, output[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(by_hand[-1], h_last[0, 0], atol=1e-6, rtol=0)


def test_gradient_vanishes_through_a_plain_rnn_and_less_through_an_lstm():
    gradient = {name: course.gradient_by_steps_back(network) for name, network in course.rnn_and_lstm().items()}
    rnn, lstm = gradient["plain RNN"], gradient["LSTM, forget-gate bias 1"]
    assert rnn[30] < 1e-5 * rnn[0]  # 1.7e-8 of 1.1 (seeds 0-4: at most 5e-7 of it)
    assert lstm[30] > 100 * rnn[30]  # 6.8e-4 (network seeds 0-4: 2,800 to 830,000 times the RNN's)
    # Left at PyTorch's init the forget gate is ~0.5, and the LSTM's gradient vanishes too (1.4e-7).
    assert gradient["LSTM, PyTorch's init"][30] < lstm[30] / 100


# ---- The notebook ----

@needs_fashion_mnist
def test_notebook_executes_and_draws(tmp_path, capfd):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    assert all(cell.get("outputs", []) == [] for cell in nbformat.read(NOTEBOOK, as_version=4).cells), (
        "store the notebook without outputs")
    # The README's command, into a folder it makes: python notebooks/run.py concepts outputs/notebooks
    assert importlib.import_module("notebooks.run").main(["concepts", str(tmp_path / "new")]) == 0
    # the kernel talks over Unix sockets: no "[IPKernelApp] WARNING | Kernel is running over TCP without encryption"
    assert "WARNING" not in capfd.readouterr().err
    notebook = nbformat.read(tmp_path / "new" / "concepts.ipynb", as_version=4)
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 5
