"""Text from a character language model: `sample` (used by generate.py) and a callback that logs samples to
TensorBoard's Text tab after every validation, so you can read what the model has learned as it trains."""
import warnings

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from data import UserInputError
from data.text import UNK, decode, encode
from models.lstm import CharLM
from models.records import logged_step


def check_temperature(temperature: float) -> None:
    if not 0 <= temperature < float("inf"):  # also NaN
        raise UserInputError(f"temperature={temperature}; use 0 (most likely character) or a finite number above it "
                         "(1 = the model's own distribution)")


def sample(net: CharLM, vocab: list[str], prompt: str, length: int, temperature: float = 1.0,
           top_k: int | None = None, seed: int = 0) -> str:
    """`prompt` followed by `length` sampled characters; the same seed gives the same text."""
    if not prompt:
        raise UserInputError("the prompt is empty; give at least one character, e.g. prompt='\\n'")
    for name, value in (("length", length), ("top_k", top_k)):  # (the text_generation notebook's parameters too)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise UserInputError(f"{name}={value!r}: give a whole number >= 0")
    check_temperature(temperature)
    if unknown := sorted(set(prompt) - set(vocab)):
        warnings.warn(f"prompt characters not in the training vocabulary, read as <unk>: {''.join(unknown)!r}",
                      stacklevel=2)
    device = next(net.parameters()).device
    ids = encode(prompt, vocab).to(device)
    generator = torch.Generator(device).manual_seed(seed)
    threads = torch.get_num_threads()
    if device.type == "cpu":  # one character at a time is a chain of tiny ops: extra threads only add overhead
        torch.set_num_threads(1)  # (measured on 2 cores: 0.34 ms a character with one thread, ~2 ms with two)
    try:
        # <unk> is any character the training text lacked: a model can give it weight (validation text has some),
        # but it names no character to print, so it is never drawn.
        never = (vocab.index(UNK),) if UNK in vocab else ()
        out = net.generate(ids, length, temperature, top_k, generator, never)
    finally:
        torch.set_num_threads(threads)
    return prompt + decode(out[len(ids):], vocab)  # the prompt verbatim, even characters the vocabulary lacks


class TextSamples(Callback):
    def __init__(self, prompt: str = "\n", length: int = 300, temperature: float = 0.8, top_k: int | None = None,
                 seed: int = 0) -> None:
        if not prompt:  # generation continues a text: it needs one character at least
            raise ValueError(f"prompt={prompt!r}: give at least one character, e.g. a newline")
        check_temperature(temperature)  # checked now, not at the first validation after an epoch of training
        self.options = dict(prompt=prompt, length=length, temperature=temperature, top_k=top_k, seed=seed)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not loggers or trainer.sanity_checking or not isinstance(pl_module.net, CharLM):
            return
        was_training = pl_module.net.training
        pl_module.net.eval()  # no dropout while sampling
        try:
            text = sample(pl_module.net, pl_module.hparams.net_kwargs["vocab"], **self.options)
        finally:  # an interrupted sample must not leave the rest of training without dropout
            pl_module.net.train(was_training)
        markdown = "\n".join("    " + line for line in text.splitlines())  # a code block keeps the line breaks
        for logger in loggers:
            logger.experiment.add_text("samples", markdown, global_step=logged_step(trainer))  # beside val/loss
