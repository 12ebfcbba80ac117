"""The progress bar of every run: Lightning's RichProgressBar, numbering the epochs of a step budget."""
import math

from lightning.pytorch.callbacks import RichProgressBar


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
