"""Every network: output shapes, and it overfits one batch through the recipe's own loss."""
import math

import pytest
import torch

from models import lstm
from models.cnn import ConvNet
from models.dnn import ClickMLP
from models.recipe import Recipe, make_optimizer
from models.schedules import SCHEDULE_SETTINGS, SCHEDULERS, one_cycle


def cnn_case(**knobs):
    net = ConvNet(in_channels=3, num_classes=10, image_size=(16, 16), **knobs)
    return net, (torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))), "multiclass", (16, 10)


def logistic_case():
    # A linear model cannot fit random labels: these depend linearly on the first column.
    numeric = 3 * torch.randn(16, 5)
    net = ClickMLP(num_numeric=5, cardinalities=[3], num_layers=0, embedding_dim=4)
    return net, (numeric, torch.randint(0, 3, (16, 1)), (numeric[:, 0] > 0).long()), "binary", (16,)


# name -> () -> (network, batch (*inputs, targets), task, logits shape)
CASES = {
    "cnn": cnn_case,
    "cnn_no_bn_stride2_k5": lambda: cnn_case(batch_norm=False, stride=2, kernel_size=5, widths=(16, 32)),
    "cnn_two_convs_per_block": lambda: cnn_case(convs_per_block=2, widths=(8, 16, 32)),
    "dnn": lambda: (ClickMLP(num_numeric=5, cardinalities=[3, 40, 7], hidden_size=32, num_layers=2, embedding_dim=4,
                             dropout=0.1),
                    (torch.randn(16, 5), torch.stack([torch.randint(0, n, (16,)) for n in (3, 40, 7)], 1),
                     torch.randint(0, 2, (16,))), "binary", (16,)),
    "dnn_logistic_regression": lambda: logistic_case(),
    "lstm_char_lm": lambda: (lstm.build(vocab_size=12, embedding_dim=8, hidden_size=32, num_layers=2),
                             (torch.randint(0, 12, (4, 20)), torch.randint(0, 12, (4, 20))), "lm", (4, 20, 12)),
    "lstm_rows_of_images": lambda: (lstm.build(num_classes=10, in_channels=1, image_size=(28, 28), hidden_size=32,
                                               num_layers=1),
                                    (torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))), "multiclass", (16, 10)),
}


def recipe_for(net, task):
    return Recipe(net, task=task, lr=1e-3, optimizer={"name": "adam"}, scheduler={"name": "none"},
                  net_kwargs={"num_classes": 10})


@pytest.mark.parametrize("name", CASES)
def test_output_shape(name):
    net, (*inputs, _), _, shape = CASES[name]()
    assert net(*inputs).shape == shape


@pytest.mark.parametrize("name", CASES)
def test_overfits_one_batch(name):
    torch.manual_seed(0)
    net, batch, task, _ = CASES[name]()
    recipe = recipe_for(net, task)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    *inputs, targets = batch
    losses = []
    for _ in range(60):
        loss = recipe.loss(net(*inputs), targets)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses[::10]


@pytest.mark.parametrize("batch_size", [7, 50])
def test_epoch_loss_is_the_mean_over_every_item_whatever_the_batch_sizes(batch_size):
    import lightning as L
    import torch.nn.functional as F

    from data.batches import TensorBatches

    torch.manual_seed(0)
    net, x, y = torch.nn.Linear(4, 3), torch.randn(50, 4), torch.randint(0, 3, (50,))
    y[-1:] = 0
    net.bias.data = torch.tensor([-5.0, 0.0, 0.0])  # the last row, alone in a batch of 7s, has a large loss
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = TensorBatches(x, y, batch_size=batch_size)
    recipe = recipe_for(net, "multiclass")
    metrics = trainer.validate(recipe, batches, verbose=False)[0]
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-5)
    # The next validation is its own: the loss and accuracy start again (early stopping compares epochs).
    metrics = trainer.validate(recipe, TensorBatches(x[:10], y[:10], batch_size=batch_size), verbose=False)[0]
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(net(x[:10]), y[:10]).item(), rel=1e-5)
    assert metrics["val/acc"] == pytest.approx((net(x[:10]).argmax(1) == y[:10]).float().mean().item())


def test_validation_scores_the_network_in_evaluation_mode_and_leaves_it_as_it_was():
    # No dropout, and batch norm's running statistics, not the batch's, and never updated by validation data: the
    # val/loss early stopping and the best checkpoint follow is the loss of the weights as they will be tested.
    import lightning as L
    import torch.nn.functional as F

    from data.batches import TensorBatches

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5),
                              torch.nn.Linear(8, 3))
    x, y = torch.randn(50, 4) * 3 + 1, torch.randint(0, 3, (50,))  # far from the running statistics' (0, 1)
    before = {name: value.clone() for name, value in net.state_dict().items()}
    with torch.no_grad():
        expected = F.cross_entropy(net.eval()(x), y).item()
    recipe = recipe_for(net.train(), "multiclass")
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(recipe, TensorBatches(x, y, batch_size=10), verbose=False)[0]
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5)
    assert all(torch.equal(value, net.state_dict()[name]) for name, value in before.items())


@pytest.mark.parametrize("scores", ["distinct", "tied", "all_tied", "float64", "bfloat16"])
def test_the_exact_auroc_is_torchmetrics_auroc(scores):
    from torchmetrics.functional.classification import binary_auroc

    from models.recipe import exact_auroc

    torch.manual_seed(0)
    for n in (2, 3, 17, 1000, 5000):
        p = torch.rand(n)
        p = {"tied": (p * 10).round() / 10, "all_tied": torch.full((n,), 0.5), "float64": p.double(),
             "bfloat16": p.bfloat16()}.get(scores, p)
        y = (torch.rand(n) < 0.1 + 0.8 * p.float()).long()
        y[:2] = torch.tensor([0, 1])  # both classes
        assert float(exact_auroc(p, y)) == pytest.approx(float(binary_auroc(p.float(), y)), abs=1e-6)


def test_the_recipes_auroc_is_torchmetrics_auroc_and_says_nan_for_nan_scores():
    from torchmetrics.classification import BinaryAUROC

    from models.recipe import ExactAUROC

    torch.manual_seed(1)
    ours, theirs = ExactAUROC(validate_args=False), BinaryAUROC(validate_args=False)
    for _ in range(3):  # batches of logits (outside [0, 1]: both apply the sigmoid) and of probabilities
        for scores in (torch.randn(100), torch.rand(100)):
            y = (torch.rand(100) < 0.5).long()
            ours.update(scores, y), theirs.update(scores, y)
    assert float(ours.compute()) == pytest.approx(float(theirs.compute()), abs=1e-6)
    ours.reset()
    ours.update(torch.tensor([0.2, float("nan"), 0.7]), torch.tensor([0, 1, 1]))
    assert math.isnan(ours.compute())  # (torchmetrics says 1.0)
    ours.reset()  # one class: torchmetrics' answer and warning
    ours.update(torch.tensor([0.2, 0.7]), torch.tensor([0, 0]))
    with pytest.warns(UserWarning, match="No positive samples"):
        assert float(ours.compute()) == 0.0


def test_binary_accuracy_shares_the_auroc_state_and_is_torchmetrics_accuracy():
    from torchmetrics.classification import BinaryAccuracy

    from models.recipe import task_metrics

    torch.manual_seed(2)
    metrics, reference = task_metrics("binary", None), BinaryAccuracy(validate_args=False)
    for scores in (torch.randn(100), torch.rand(100), torch.tensor([0.5, 0.5 + 1e-7, 0.0, 1.0])):
        y = (torch.rand(len(scores)) < 0.5).long()
        metrics.update(scores, y), reference.update(scores, y)
    assert list(metrics.compute_groups.values()) == [["acc", "auroc"]]  # one state, updated once a step
    assert float(metrics.compute()["acc"]) == float(reference.compute())


def test_l1_adds_its_pull_to_the_step_but_train_loss_is_the_datas_loss():
    import lightning as L
    import torch.nn.functional as F

    from data.batches import TensorBatches

    torch.manual_seed(0)
    net, x, y = torch.nn.Linear(4, 3), torch.randn(64, 4), torch.randint(0, 3, (64,))
    weight, bias = (p.detach().clone().requires_grad_() for p in (net.weight, net.bias))
    data_loss = F.cross_entropy(F.linear(x, weight, bias), y)
    gradient, bias_gradient = torch.autograd.grad(data_loss, (weight, bias))
    recipe = Recipe(net, task="multiclass", lr=0.1, l1=0.5, optimizer={"name": "sgd", "momentum": 0.0,
                    "nesterov": False}, scheduler={"name": "none"}, net_kwargs={"num_classes": 3})
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(recipe, TensorBatches(x, y, batch_size=64))
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(data_loss.item(), rel=1e-5)  # no L1 in it
    # one plain SGD step on loss + l1 * sum|w|: the data's gradient plus l1 * sign(w), the weights only (not biases)
    expected = weight - 0.1 * (gradient + 0.5 * weight.sign())
    assert torch.allclose(net.weight, expected, atol=1e-6)
    assert torch.allclose(net.bias, bias - 0.1 * bias_gradient, atol=1e-6)  # the data's gradient alone


@pytest.mark.parametrize("task, classes", [("multiclass", 3), ("binary", 1)])
def test_label_smoothing_trains_on_the_smoothed_targets_but_train_loss_is_the_datas_loss(task, classes):
    import lightning as L
    import torch.nn.functional as F

    from data.batches import TensorBatches

    torch.manual_seed(0)
    net, x = torch.nn.Linear(4, classes), torch.randn(64, 4)
    y = torch.randint(0, 3, (64,)) if task == "multiclass" else torch.randint(0, 2, (64,)).float()
    weight, bias = (p.detach().clone().requires_grad_() for p in (net.weight, net.bias))
    logits = F.linear(x, weight, bias)
    if task == "multiclass":  # torch's own label smoothing, and the plain loss
        smoothed, data_loss = F.cross_entropy(logits, y, label_smoothing=0.2), F.cross_entropy(logits, y)
    else:  # the binary targets 0 and 1 smoothed to 0.1 and 0.9
        smoothed = F.binary_cross_entropy_with_logits(logits.squeeze(1), y * 0.8 + 0.1)
        data_loss = F.binary_cross_entropy_with_logits(logits.squeeze(1), y)
    gradient, bias_gradient = torch.autograd.grad(smoothed, (weight, bias), retain_graph=True)
    data_gradient = torch.autograd.grad(data_loss, weight)[0]
    assert (gradient - data_gradient).abs().max() > 1e-3  # steps ~1e-4 apart: the check below tells them apart
    recipe = Recipe(net, task=task, lr=0.1, label_smoothing=0.2, optimizer={"name": "sgd", "momentum": 0.0,
                    "nesterov": False}, scheduler={"name": "none"}, net_kwargs={"num_classes": classes})
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(recipe, TensorBatches(x, y.long(), batch_size=64))
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(data_loss.item(), rel=1e-5)
    # one plain SGD step down the smoothed loss's gradient
    assert torch.allclose(net.weight, weight - 0.1 * gradient, atol=1e-6)
    assert torch.allclose(net.bias, bias - 0.1 * bias_gradient, atol=1e-6)


def test_the_logged_gradient_norm_is_the_norm_of_all_gradients_together():
    net = torch.nn.Linear(2, 1)
    net.weight.grad, net.bias.grad = torch.tensor([[3.0, 0.0]]), torch.tensor([4.0])  # norms 3 and 4
    recipe, logged = recipe_for(net, "multiclass"), {}
    recipe.log = lambda name, value, **kwargs: logged.update({name: value})
    recipe._log_now = True  # a logging step
    recipe.on_before_optimizer_step(None)
    assert logged["train/grad_norm"].item() == pytest.approx(5.0)  # sqrt(3² + 4²), not 3 + 4


@pytest.mark.parametrize("optimizer, momentum", [({"name": "adamw"}, lambda g: g["betas"][0]),
                                                 ({"name": "sgd", "momentum": 0.9}, lambda g: g["momentum"]),
                                                 ({"name": "rmsprop", "momentum": 0.0}, lambda g: g["momentum"])])
def test_one_cycle_cycles_momentum_only_of_an_optimizer_that_has_some(optimizer, momentum):
    schedule = {"name": "onecycle", "pct_start": 0.25, "cycle_momentum": True, "base_momentum": 0.85,
                "max_momentum": 0.95}
    options = {k: v for k, v in optimizer.items() if k != "name"}
    built = make_optimizer(torch.nn.Linear(3, 2).parameters(), optimizer["name"], 0.1, options)
    scheduler = one_cycle(built, schedule, lr=0.1, total=8)
    group = built.param_groups[0]
    at_start = momentum(group)
    scheduler.step()  # the LR's peak: step pct_start * total_steps - 1 = 1
    cycled = optimizer.get("momentum", 0.9) > 0
    assert (at_start, momentum(group)) == ((0.95, pytest.approx(0.85)) if cycled else (0.0, 0.0))


def test_one_cycle_leaves_momentum_alone_when_told():
    schedule = {"name": "onecycle", "pct_start": 0.25, "cycle_momentum": False}
    adamw = make_optimizer(torch.nn.Linear(3, 2).parameters(), "adamw", 0.1, {"betas": [0.8, 0.99]})
    scheduler = one_cycle(adamw, schedule, lr=0.1, total=8)
    for _ in range(4):
        scheduler.step()
        assert adamw.param_groups[0]["betas"] == (0.8, 0.99)  # the optimizer's own, every step


@pytest.mark.parametrize("total, expected", [(1, [0.1]), (2, [0.1, 0.1]), (3, [0.004, 0.1, 4e-7]),
                                             (5, [0.004, 0.1, 0.075, 0.025, 4e-7])])
def test_a_run_too_short_for_pct_start_still_warms_up_or_trains_at_the_learning_rate(total, expected):
    # pct_start 0.25 of 1-7 steps ends the warm-up before step 1: the run would start annealing, and a one-step
    # run (trainer.max_steps=1) would take its only step at lr / 250000, learning nothing
    sgd = make_optimizer(torch.nn.Linear(3, 2).parameters(), "sgd", 0.1, {"momentum": 0.9})
    scheduler = one_cycle(sgd, {"name": "onecycle", "pct_start": 0.25}, lr=0.1, total=total)
    rates = []
    for _ in range(total):
        rates.append(sgd.param_groups[0]["lr"])
        sgd.step()
        scheduler.step()
    assert rates == pytest.approx(expected, rel=1e-3)


def test_l2_weight_decay_applies_to_weights_and_kernels_only():
    net = ConvNet(in_channels=1, num_classes=10, image_size=(8, 8), widths=(4,), batch_norm=True)
    recipe = Recipe(net, task="multiclass", lr=1e-3, weight_decay=0.05, optimizer={"name": "adamw"},
                    scheduler={"name": "none"}, net_kwargs={"num_classes": 10})
    decayed, free = recipe.configure_optimizers().param_groups
    assert decayed["weight_decay"] == 0.05 and free["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(p) for p in net.parameters() if p.ndim >= 2}  # kernels, matrices
    assert {id(p) for p in free["params"]} == {id(p) for p in net.parameters() if p.ndim < 2}  # biases, norm scales
    assert free["params"] and len(decayed["params"]) + len(free["params"]) == len(list(net.parameters()))


def test_adamw_decays_the_weights_apart_from_the_gradient_and_leaves_the_biases_alone():
    # One step of optimizer=adamw, model.weight_decay=0.1 through the recipe: Adam's first step moves each parameter
    # by lr * g / (|g| + eps) (about lr * sign(g)); AdamW's decay then shrinks each weight by lr * wd * w, decoupled
    # from that normalized step. Adam with an L2 term (torch.optim.Adam's weight_decay) would add wd * w to g first,
    # where the normalization all but erases it; the biases are in the group without decay.
    import lightning as L
    import torch.nn.functional as F

    from data.batches import TensorBatches

    torch.manual_seed(0)
    net, x, y = torch.nn.Linear(4, 3), torch.randn(64, 4), torch.randint(0, 3, (64,))
    net.weight.data *= 10  # a decay of 1% a step (lr * wd) moves these weights ~0.01 .. 0.05: well above rounding
    weight, bias = (p.detach().clone().requires_grad_() for p in (net.weight, net.bias))
    gradient, bias_gradient = torch.autograd.grad(F.cross_entropy(F.linear(x, weight, bias), y), (weight, bias))
    recipe = Recipe(net, task="multiclass", lr=0.1, weight_decay=0.1, optimizer={"name": "adamw"},
                    scheduler={"name": "none"}, net_kwargs={"num_classes": 3})
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(recipe, TensorBatches(x, y, batch_size=64))
    eps = 1e-8  # torch's default
    expected = weight * (1 - 0.1 * 0.1) - 0.1 * gradient / (gradient.abs() + eps)
    assert torch.allclose(net.weight, expected, atol=1e-5)
    assert torch.allclose(net.bias, bias - 0.1 * bias_gradient / (bias_gradient.abs() + eps), atol=1e-5)


@pytest.mark.parametrize("optimizer, scheduler, message", [
    ("lion", "none", "unknown optimizer 'lion'; choose one of"),
    ("adamw", "linear", "unknown scheduler 'linear'; choose one of none, step, cosine, onecycle"),
])
def test_an_unknown_optimizer_or_schedule_is_refused_when_the_recipe_is_made(optimizer, scheduler, message):
    with pytest.raises(ValueError, match=message):
        Recipe(logistic_case()[0], task="binary", lr=1e-3, optimizer={"name": optimizer}, scheduler={"name": scheduler})


def test_each_schedule_config_sets_exactly_the_settings_its_check_expects():
    """models/checks.py refuses a missing or extra scheduler.* key by SCHEDULE_SETTINGS: a key added to a config
    (or to make_scheduler) and not there would be refused on every run of that schedule."""
    from omegaconf import OmegaConf

    from models.checks import CONFIGS
    configs = {path.stem: OmegaConf.load(path) for path in (CONFIGS / "scheduler").glob("*.yaml")}
    assert sorted(configs) == sorted(SCHEDULERS) == sorted(SCHEDULE_SETTINGS)
    for name, cfg in configs.items():
        assert cfg.name == name and sorted(k for k in cfg if k != "name") == sorted(SCHEDULE_SETTINGS[name])


def test_a_cnn_that_would_shrink_images_to_nothing_is_refused_by_name():
    with pytest.raises(ValueError, match=r"widths=\[32, 64, 128\], kernel_size=3, padding=1, stride=2: block 3 leaves"):
        ConvNet(in_channels=1, num_classes=10, image_size=(28, 28), widths=(32, 64, 128), stride=2)
    with pytest.raises(ValueError, match=r"kernel_size=5, padding=0, stride=1: block 2 leaves no pixels of the 8x8"):
        ConvNet(in_channels=1, num_classes=10, image_size=(8, 8), widths=(4, 8), kernel_size=5, padding=0)
    for padding, stride in (("same", 1), ("valid", 1), (0, 2), (2, 1), (1, 3)):  # the head is sized by arithmetic:
        net = ConvNet(in_channels=1, num_classes=10, image_size=(28, 23), widths=(4, 8), padding=padding, stride=stride)
        assert net(torch.zeros(2, 1, 28, 23)).shape == (2, 10)  # it agrees with what the convolutions make
    bn = ConvNet(in_channels=1, num_classes=10, image_size=(28, 28)).features[1]
    assert bn.num_batches_tracked == 0 and torch.equal(bn.running_var, torch.ones(32))  # building runs no batch


def test_a_learning_rate_finder_trains_before_the_recipe_starts_its_fit(tmp_path):
    # Lightning's finder trains (and checkpoints) inside its own on_fit_start, before the recipe's: the non-finite
    # guard exists by then, and the fit itself starts with a clean one.
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateFinder

    from data.batches import TensorBatches

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    recipe = recipe_for(torch.nn.Linear(4, 3), "multiclass")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=[LearningRateFinder(num_training_steps=5)])
    trainer.fit(recipe, TensorBatches(x, y, batch_size=8), TensorBatches(x, y, batch_size=32))
    assert trainer.global_step == 8 and int(recipe.first_bad_step) == -1


def test_a_learning_rate_finder_trial_may_diverge_and_the_fit_goes_on(tmp_path):
    # Finding where the loss blows up is the finder's job: a non-finite loss in its trial (learning rates near
    # float32's largest) is its finding, not the run's failure; the fit then trains from the restored weights.
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateFinder

    from data.batches import TensorBatches

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    recipe = Recipe(torch.nn.Linear(4, 3), task="multiclass", lr=1e-3, optimizer={"name": "sgd"},  # (Adam refuses
                    scheduler={"name": "none"}, net_kwargs={"num_classes": 10})  # such learning rates outright)
    finder = LearningRateFinder(min_lr=1e37, max_lr=3e38, num_training_steps=5, early_stop_threshold=None)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[finder])
    trainer.fit(recipe, TensorBatches(x, y, batch_size=8), TensorBatches(x, y, batch_size=32))
    assert not all(math.isfinite(loss) for loss in finder.optimal_lr.results["loss"])  # the trial diverged
    assert trainer.global_step == 8 and int(recipe.first_bad_step) == -1  # the fit did not


def test_a_batch_size_finder_trial_leaves_the_fit_to_train(tmp_path):
    # The finder's trials end at their own max_steps (3): the recipe's end-of-run stop is for the fit alone, or the
    # flag it leaves behind would end the fit before its first step.
    import lightning as L
    from lightning.pytorch.callbacks import BatchSizeFinder

    from data.batches import TensorBatches

    class Rows(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.batch_size, self.x, self.y = 4, torch.randn(64, 4), torch.randint(0, 3, (64,))

        def train_dataloader(self):
            return TensorBatches(self.x, self.y, batch_size=self.batch_size)

        def val_dataloader(self):
            return TensorBatches(self.x, self.y, batch_size=32)

    torch.manual_seed(0)
    recipe, rows = recipe_for(torch.nn.Linear(4, 3), "multiclass"), Rows()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=[BatchSizeFinder(init_val=4, max_trials=2, steps_per_trial=3)])
    trainer.fit(recipe, datamodule=rows)
    assert rows.batch_size > 4 and trainer.global_step == 64 // rows.batch_size  # a whole epoch of the found size


@pytest.mark.parametrize("build, message", [
    (lambda: ConvNet(1, 10, (28, 28), kernel_size=0), "kernel_size=0: give a whole number >= 1"),
    (lambda: ConvNet(1, 10, (28, 28), stride=0), "stride=0: give a whole number >= 1"),  # was a ZeroDivisionError
    (lambda: ConvNet(1, 10, (28, 28), padding=-1), "padding=-1: give a whole number >= 0"),
    (lambda: ConvNet(1, 10, (28, 28), widths=[16, 0]), r"widths=\[16, 0\]: give one or more whole numbers >= 1"),
    (lambda: ConvNet(1, 10, (28, 28), hidden_size=-5), "hidden_size=-5"),  # was torch's "negative dimension"
    (lambda: lstm.CharLM(60, embedding_dim=-1), "embedding_dim=-1"),
    (lambda: lstm.SequenceClassifier(28, 10, num_layers=0), "num_layers=0: give a whole number >= 1"),
    (lambda: ClickMLP(3, [5, 6], hidden_size=0), "hidden_size=0"),  # was a network with no units, silently
    (lambda: ClickMLP(3, [5, 6], num_layers=-1), "num_layers=-1: give a whole number >= 0"),  # 0: logistic
])
def test_a_size_a_network_cannot_have_is_refused_naming_it(build, message):
    with pytest.raises(ValueError, match=message):  # train.py: `error: model.net: kernel_size=0: ...`
        build()


@pytest.mark.parametrize("max_epochs, max_steps, accumulate, expected", [
    (1, 100, 1, 15),    # the epochs end the run first: the schedule must anneal within them
    (3, 20, 1, 20),     # the steps do
    (-1, 40, 1, 40),    # steps only (the LSTM's way)
    (2, -1, 4, 8),      # 15 batches, a step per 4 and one for the remainder: 4 an epoch
])
def test_a_schedule_spans_the_steps_the_run_will_take(max_epochs, max_steps, accumulate, expected):
    from types import SimpleNamespace

    from models.schedules import total_steps

    trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, limit_train_batches=1.0,
                              accumulate_grad_batches=accumulate,
                              datamodule=SimpleNamespace(train_dataloader=lambda: range(15)))
    assert total_steps(trainer, "onecycle") == expected


@pytest.mark.parametrize("limit, expected", [(100, 15), (4, 4), (0.5, 7)])
def test_an_epoch_is_the_batches_limit_train_batches_lets_it_take(limit, expected):
    # Pins steps_per_epoch's cap: a whole-number limit above the loader's length leaves the epoch whole.
    from types import SimpleNamespace

    from models.schedules import steps_per_epoch

    trainer = SimpleNamespace(limit_train_batches=limit, accumulate_grad_batches=1,
                              datamodule=SimpleNamespace(train_dataloader=lambda: range(15)))
    assert steps_per_epoch(trainer) == expected


def test_every_metric_a_monitor_can_watch_has_the_right_direction():
    from models.recipe import epoch_metric_names, metric_mode

    falls = {"loss", "bpc", "perplexity"}  # a lower value is a better model
    names = {name for task in ("binary", "multiclass", "lm") for name in epoch_metric_names(task, "val")}
    assert {name.split("/")[1] for name in names} == falls | {"acc", "auroc"}
    for name in names:
        assert metric_mode(name) == ("min" if name.split("/")[1] in falls else "max"), name


def test_the_non_finite_guard_keeps_the_first_bad_batch():
    # Pins _record_non_finite: a later non-finite loss does not overwrite the first; every batch is counted.
    recipe = recipe_for(torch.nn.Linear(2, 1), "multiclass")
    for loss in (1.0, float("nan"), 2.0, float("inf")):
        recipe._record_non_finite(torch.tensor(loss))
    assert (int(recipe.steps_seen), int(recipe.first_bad_step)) == (4, 1)


def fake_trainer(**settings):
    """What Recipe's hooks read of a Trainer: a run of 2 epochs of 5 batches, logging every 2 steps."""
    from types import SimpleNamespace

    return SimpleNamespace(**{"log_every_n_steps": 2, "global_step": 0, "max_steps": -1, "max_epochs": 2,
                              "current_epoch": 0, "num_training_batches": 5, "callbacks": [], "world_size": 1,
                              "global_rank": 0, "should_stop": False, **settings})


def test_the_non_finite_guard_looks_at_the_first_batch_and_every_log_interval():
    # Pins check_finite, on_train_batch_end and on_train_epoch_end: a bad first batch (step 0) is caught at batch 0's
    # check, a bad step is named by its epoch and batch, and with log_every_n_steps=0 an epoch's end still looks.
    from types import SimpleNamespace

    from models.recipe import NonFiniteLossError

    recipe = recipe_for(torch.nn.Linear(2, 1), "multiclass")
    recipe._trainer, recipe._fitting = fake_trainer(), True
    recipe._record_non_finite(torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"at training batch 0 \(epoch 0, batch 0\)"):
        recipe.on_train_batch_end(None, None, 0)
    recipe._guard(fresh=True)
    for loss in [1.0] * 7 + [float("inf")]:
        recipe._record_non_finite(torch.tensor(loss))
    with pytest.raises(NonFiniteLossError, match=r"at training batch 7 \(epoch 1, batch 2\)"):
        recipe.on_train_batch_end(None, None, 2)
    recipe._trainer = fake_trainer(log_every_n_steps=0, fit_loop=SimpleNamespace())  # checked at epoch ends only
    recipe.log_dict = lambda values, **kwargs: None
    recipe.on_train_batch_end(None, None, 2)
    with pytest.raises(NonFiniteLossError, match="at training batch 7"):
        recipe.on_train_epoch_end()  # before the epoch's metrics are logged and a checkpoint is written
    recipe._trainer = fake_trainer(num_training_batches=float("inf"))  # a stream of unknown length: no epoch
    with pytest.raises(NonFiniteLossError, match=r"at training batch 7; the checkpoints"):
        recipe.check_finite()


def test_per_step_values_are_logged_every_interval_and_at_the_runs_last_step():
    # Pins _logging_step: (steps done + 1) a multiple of log_every_n_steps, the last batch of the last epoch, the
    # step max_steps ends at, an expired max_time; never with log_every_n_steps=0.
    from lightning.pytorch.callbacks import Timer

    recipe = recipe_for(torch.nn.Linear(2, 1), "multiclass")
    expired = Timer(duration={"seconds": 1})
    expired._offset = 2
    cases = [({"global_step": 1}, 1, True), ({"global_step": 2}, 2, False),
             ({"global_step": 8, "current_epoch": 1}, 4, True),  # the last epoch's last batch: step 9, not even
             ({"global_step": 2, "max_steps": 3}, 2, True), ({"global_step": 2, "callbacks": [expired]}, 2, True),
             ({"global_step": 1, "log_every_n_steps": 0}, 1, False)]
    for settings, batch_idx, logged in cases:
        recipe._trainer = fake_trainer(**settings)
        recipe._batch_started = None  # the fit's first batch
        every_rank = logged and "callbacks" not in settings  # not a step this process's clock picked
        assert recipe._logging_step(batch_idx) == (logged, every_rank), settings
    # The Timer decides after a batch whether the time ran out during it, and Lightning then sends that step's
    # values: the batches of the last two batches' time before the limit log theirs (else stale ones are sent).
    import time
    ending = Timer(duration={"seconds": 10})
    ending._offset = 9.5  # 0.5 s left
    recipe._trainer = fake_trainer(global_step=2, callbacks=[ending])
    for batch_seconds, logged in ((0.1, False), (0.3, True)):
        recipe._batch_started = time.perf_counter() - batch_seconds  # when the previous batch began
        assert recipe._logging_step(2) == (logged, False), batch_seconds  # picked by this process's clock


def test_a_checkpoint_written_before_the_fit_starts_counts_no_training_time():
    # Lightning's learning-rate finder writes (and restores) a checkpoint in its on_fit_start, before this module's:
    # the time since the module was built, the data's set-up, was counted as training and carried into the fit.
    from types import SimpleNamespace

    recipe = recipe_for(torch.nn.Linear(2, 1), "multiclass")
    recipe._trainer = fake_trainer(state=SimpleNamespace(fn="fit"))
    recipe._fit_started -= 100  # built 100 s ago
    checkpoint = {}
    recipe.on_save_checkpoint(checkpoint)
    assert checkpoint["train_seconds"] == 0.0
    recipe.on_fit_start()
    recipe.on_save_checkpoint(checkpoint)
    assert 0 < checkpoint["train_seconds"] < 10


def test_a_run_resumed_without_a_schedule_trains_at_the_configured_rate_and_momentum():
    # Pins on_train_start's reset: the restored optimizer holds where a one-cycle schedule left lr and Adam's beta1.
    from types import SimpleNamespace

    from lightning.pytorch.core.optimizer import LightningOptimizer

    recipe = recipe_for(torch.nn.Linear(2, 1), "multiclass")  # adam, lr 1e-3, betas (0.9, 0.999)
    adam = torch.optim.Adam(recipe.parameters(), lr=4e-9, betas=(0.95, 0.999))
    progress = SimpleNamespace(batch_progress=SimpleNamespace(total=SimpleNamespace(completed=30)))
    for ckpt_path, lr, betas in ((None, 4e-9, (0.95, 0.999)), ("last.ckpt", 1e-3, (0.9, 0.999))):
        recipe._trainer = fake_trainer(ckpt_path=ckpt_path, fit_loop=SimpleNamespace(epoch_loop=progress),
                                       early_stopping_callback=None,
                                       strategy=SimpleNamespace(_lightning_optimizers=[LightningOptimizer(adam)]))
        recipe.on_train_start()
        assert (adam.param_groups[0]["lr"], adam.param_groups[0]["betas"]) == (lr, betas)
    assert int(recipe.steps_seen) == 30  # the guard counts on from the checkpoint's batches


def test_a_resumed_schedule_is_checked_against_its_own_kind_of_state():
    # A cosine schedule's saved length must match; StochasticWeightAveraging's SWALR, saved in the schedule's place
    # once averaging began, has no length to compare (it was refused as "None steps long").
    from torch.optim.swa_utils import SWALR

    from data import UserInputError
    from models.schedules import check_resumed_length

    sgd = make_optimizer(torch.nn.Linear(3, 2).parameters(), "sgd", 0.1, {"momentum": 0.9})
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=40)
    check_resumed_length(cosine.state_dict(), cosine, "cosine")
    with pytest.raises(UserInputError, match="cosine schedule is 30 steps long, this run's 40"):
        check_resumed_length({**cosine.state_dict(), "T_max": 30}, cosine, "cosine")
    swa = SWALR(make_optimizer(torch.nn.Linear(3, 2).parameters(), "sgd", 0.1, {"momentum": 0.9}), swa_lr=1e-3)
    check_resumed_length(swa.state_dict(), cosine, "cosine")


def test_a_schedule_is_cut_short_until_its_last_step_is_taken():
    # Pins cut_short's boundary: a one-cycle schedule stepped through all its steps ended; one step fewer did not.
    from types import SimpleNamespace

    from models.schedules import cut_short

    sgd = make_optimizer(torch.nn.Linear(3, 2).parameters(), "sgd", 0.1, {"momentum": 0.9})
    scheduler = one_cycle(sgd, {"name": "onecycle", "pct_start": 0.25}, lr=0.1, total=8)
    trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    for _ in range(7):
        sgd.step()
        scheduler.step()
    assert "after 7 of the 8 steps" in cut_short(trainer)
    sgd.step()
    scheduler.step()
    assert cut_short(trainer) is None


def test_only_the_first_conv_of_a_block_strides_and_batch_norm_replaces_the_conv_bias():
    # Pins the block's layers: stride on the first conv only, no conv bias before batch norm, a bias without it.
    for batch_norm in (True, False):
        net = ConvNet(in_channels=1, num_classes=10, image_size=(16, 16), widths=(4,), convs_per_block=2, stride=2,
                      batch_norm=batch_norm)
        convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
        assert [conv.stride for conv in convs] == [(2, 2), (1, 1)]
        assert [conv.bias is None for conv in convs] == [batch_norm, batch_norm]
        assert net.features(torch.zeros(1, 1, 16, 16)).shape == (1, 4, 4, 4)  # 16 -> 8 (stride) -> 8 -> 4 (pool)


def test_the_cnn_head_drops_out_the_flattened_features_and_the_hidden_units():
    # Pins the head: flatten, dropout, linear, ReLU, dropout, linear, with the configured dropout rate.
    head = ConvNet(in_channels=1, num_classes=10, image_size=(8, 8), widths=(4,), dropout=0.3).head
    nn = torch.nn
    assert [type(m) for m in head] == [nn.Flatten, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.3, 0.3]


def test_lightnings_per_hook_writes_skip_the_module_registry_and_modules_and_tensors_still_register(monkeypatch):
    # Lightning writes `_current_fx_name` around each of ~20 hook calls a step: on a GPU, whose small steps are
    # host-bound, nn.Module.__setattr__'s registry checks there are step time. A plain value for a plain name goes
    # straight in; a parameter, buffer or submodule is still registered, also under a name that held a plain value.
    import lightning as L

    seen = []
    module_setattr = torch.nn.Module.__setattr__
    monkeypatch.setattr(torch.nn.Module, "__setattr__",
                        lambda self, name, value: (seen.append(name), module_setattr(self, name, value))[1])
    recipe = recipe_for(torch.nn.Linear(4, 10), "multiclass")
    rows = torch.utils.data.TensorDataset(torch.randn(24, 4), torch.randint(0, 10, (24,)))
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    seen.clear()  # (the module's own __init__ makes these names, through the registry)
    trainer.fit(recipe, torch.utils.data.DataLoader(rows, batch_size=8))
    assert recipe.trainer.global_step == 3
    assert "_current_fx_name" not in seen and "_log_now" not in seen
    recipe.spare = 1
    recipe.spare = torch.nn.Linear(2, 2)  # a plain name becomes a submodule
    recipe.weight = torch.nn.Parameter(torch.zeros(2))
    assert "spare" in dict(recipe.named_children()) and "weight" in dict(recipe.named_parameters())
    recipe.register_buffer("counts", torch.zeros(2))
    recipe.counts = torch.ones(2)  # a buffer stays a buffer
    assert torch.equal(dict(recipe.named_buffers())["counts"], torch.ones(2))
