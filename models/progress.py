"""The console of every run: Lightning's RichProgressBar, numbering the epochs of a step budget, and its
RichModelSummary, of the network's layers only."""
import math
import warnings

from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from rich import get_console


class ProgressBar(RichProgressBar):
    """With `max_epochs=-1` and a step budget (the LSTM's one-cycle schedule spans `max_steps`), Lightning 2.6 labels
    the bar `Epoch 3/-2` (Lightning-AI/pytorch-lightning#21925, fixed after 2.6). Here the last epoch's number comes
    from the budget instead (`Epoch 3/8` for 2250 steps of 250), or no total when there is no bound."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        batches = trainer.num_training_batches  # inf for a stream of unknown length
        if trainer.max_steps > 0 and 0 < batches < math.inf:
            steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
            description += f"/{math.ceil(trainer.max_steps / steps_per_epoch) - 1}"
        return f"{description:{len(self.validation_description)}}"


class NetSummary(RichModelSummary):
    """Lightning's table of the LightningModule's modules, the network's rows only (not the loss and metric objects
    the recipe also holds), with each layer's In sizes, Out sizes and FLOPs for one validation example (the recipe's
    `example_input_array`): 28x28 images keep their size through a padded 3x3 convolution, a 2x2 max-pool halves it.
    Written to a pipe or a file, where Rich assumes 80 columns, the table is not squeezed into them."""

    def on_fit_start(self, trainer, pl_module) -> None:
        with warnings.catch_warnings():  # mixed precision keeps float32 weights: the 32 bits it falls back to are right
            warnings.filterwarnings("ignore", r"Precision \S+-mixed is not supported by the model summary")
            super().on_fit_start(trainer, pl_module)

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], *args, **kwargs) -> None:
        names = dict(summary_data)["Name"]
        rows = [i for i, name in enumerate(names) if name == "net" or name.startswith("net.")]
        summary_data = [(column, [values[i] for i in rows]) for column, values in summary_data]
        console = get_console()
        width = console.width
        if not console.is_terminal:
            console.width = max(width, 120)
        try:
            RichModelSummary.summarize(summary_data, *args, **kwargs)
        finally:
            console.width = width
