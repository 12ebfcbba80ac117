"""Sample text from a trained character language model (`python train.py model=lstm ...`):

    python generate.py ckpt_path=RUN_DIR/checkpoints/best.ckpt prompt="ROMEO:" length=500 temperature=0.8 top_k=40

Prints the prompt followed by `length` sampled characters. The same seed (default 0) gives the same text.
temperature=0 always takes the most likely character; top_k=0 (default) samples from the whole vocabulary.
In the prompt, \\n is a newline and \\t a tab (a shell passes them as two characters), \\\\ a backslash.
"""
import re
import sys
import warnings

import torch

from data import UserInputError
from models.lstm import CharLM
from models.recipe import load_recipe
from models.records import stdout_closed, writes_reported
from models.runs import load_checkpoint
from models.samples import sample

# option -> (type, default); given on the command line as key=value
OPTIONS = {"ckpt_path": (str, None), "prompt": (str, "\n"), "length": (int, 500), "temperature": (float, 0.8),
           "top_k": (int, 0), "seed": (int, 0), "device": (str, "cpu")}
ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}  # prompt='KING:\n' ends with a newline, as in the plays
MAX_LENGTH = 1_000_000  # minutes of sampling on a CPU (a character's cost: models/samples.py)


def parse(argv: list[str]) -> dict:
    options = {key: default for key, (_, default) in OPTIONS.items()}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise UserInputError(f"{arg!r}: give key=value with key one of {', '.join(OPTIONS)}")
        try:
            options[key] = OPTIONS[key][0](value)  # the value verbatim: prompt=ROMEO: stays "ROMEO:"
        except ValueError:
            kind = {int: "a whole number", float: "a number"}[OPTIONS[key][0]]  # prompt, ckpt_path, device: any text
            raise UserInputError(f"{key}={value!r}: give {kind}") from None
    if options["ckpt_path"] is None:
        raise UserInputError("ckpt_path is required: ckpt_path=RUN_DIR/checkpoints/best.ckpt from a model=lstm run")
    for key in ("length", "top_k", "temperature"):
        if not 0 <= options[key] < float("inf"):
            raise UserInputError(f"{key}={options[key]}: give a {'finite number' if key == 'temperature' else 'number'}"
                                 " >= 0")
    if options["length"] > MAX_LENGTH:  # the text is printed once whole: a mistyped length would run for hours
        raise UserInputError(f"length={options['length']}: give at most {MAX_LENGTH:,} characters (for more text, "
                             "run it again with another seed=N)")
    if not 0 <= options["seed"] < 2**63:  # a torch.Generator's seed
        raise UserInputError(f"seed={options['seed']}: give a whole number >= 0 and < 2**63")
    options["prompt"] = re.sub(r"\\([nt\\])", lambda m: ESCAPES[m[1]], options["prompt"])
    if not options["prompt"]:
        raise UserInputError("prompt is empty: give at least one character (the default is a newline)")
    try:
        options["prompt"].encode("utf-8")
    except UnicodeEncodeError as err:  # bytes the shell passed that are no UTF-8 (Python keeps them as surrogates)
        raise UserInputError(f"prompt holds bytes that are not UTF-8 text (at character {err.start + 1}); give the "
                             "prompt in UTF-8") from None
    return options


def generate(ckpt_path: str, prompt: str = "\n", length: int = 500, temperature: float = 0.8, top_k: int = 0,
             seed: int = 0, device: str = "cpu") -> str:
    load_checkpoint(ckpt_path)  # a missing or foreign file is a one-line error
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise UserInputError(f"device={device!r} is not a device: give cpu, cuda or cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"device={device}: generate.py runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device={device} but this machine has no CUDA GPU: use device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserInputError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    recipe = load_recipe(ckpt_path, map_location=device)
    if not isinstance(recipe.net, CharLM):
        raise UserInputError(f"ckpt_path={ckpt_path} holds a {type(recipe.net).__name__}, not a character language "
                             "model; train one with `python train.py model=lstm`")
    net = recipe.net.to(device).eval()
    return sample(net, recipe.hparams.net_kwargs["vocab"], prompt, length, temperature, top_k or None, seed)


def main(argv: list[str]) -> None:
    try:
        options = parse(argv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            text = generate(**options)
        for warning in caught:  # one line each, without Python's second line (the source that warned)
            print(f"warning: {warning.message}", file=sys.stderr)
        with writes_reported("stdout"):  # (a full disk behind `> FILE`)
            print(text, flush=True)  # flushed here, where a closed pipe is caught, not at exit
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # stdout closed early (`| head -c 100`)
        sys.exit(stdout_closed())


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main(sys.argv[1:])
