"""A trained checkpoint's predictions on new inputs: `python predict.py ckpt_path=RUN/checkpoints/best.ckpt input=PATH`.

  input=IMAGE or input=FOLDER  PNG/JPG/... images (a folder: every image directly in it) -> one row per image:
                               file, class, probability, then the probability of every class. Each image is
                               turned upright (EXIF orientation), greyscaled or made RGB (transparent pixels over
                               black), fitted to the network's input as the training images were made (grey:
                               light on black, inverted if it is dark on a light or transparent background
                               (invert=auto|true|false), scaled whole and centred on black; RGB: scaled to cover
                               it and centre-cropped),
                               and normalized with the training split's statistics, as in training.
  input=FILE.csv               rows of a table -> the same rows with `click_probability` appended (binary models:
                               data=csv, advertising, clicks or criteo), or `class` and `probability` (multi-class).
  input=FILE.txt or FILE.tsv   Kaggle's Criteo lines (tab-separated, no header; with or without the label) -> the
                               same, for a data=criteo model. The run's DataModule reads the file with its
                               `read_frames(path, rows) -> Iterator[pandas.DataFrame]` (without one: as a CSV) and
                               turns rows into network inputs with its
                               `encode_frame(pandas.DataFrame, where) -> tuple[Tensor, ...]` (`where`, whose str()
                               names the input, goes into its errors).
Text prompts for the language model are generate.py's. The result is CSV, on stdout (numbers rounded to 4 decimals)
or in `out=FILE` (full precision). Inputs are read and predicted CHUNK rows (IMAGE_CHUNK images) at a time, so a
table of any size fits in memory; stdout gets each chunk as it is done; out=FILE is written whole or not at all (a
temporary file beside it becomes FILE at the end), and bad input stops at the first bad row, named by row and line.
The DataModule is rebuilt from the config stored in the checkpoint, with the normalization statistics, class names
and encoders it fitted on the training split, which the checkpoint holds too: the training data is not read. (A
DataModule that saves no state is set up on its training split instead, so that data must be readable then:
`paths.data_dir=DIR` if it moved.)
"""
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from data import UserInputError, class_names, count
from data.columns import CsvRows, read_csv_rows
from models.recipe import load_recipe, probabilities
from models.records import stdout_closed, writes_reported, written_whole
from models.runs import fitted_datamodule, load_checkpoint, parse_arguments

USAGE = ("python predict.py ckpt_path=RUN/checkpoints/best.ckpt input=IMAGE|FOLDER|FILE.csv|FILE.txt [out=FILE.csv] "
         "[invert=auto|true|false] [paths.data_dir=DIR] [data.KEY=VALUE ...]")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ROW_SUFFIXES = (".csv", ".txt", ".tsv")  # .txt, .tsv: Kaggle's Criteo lines, tab-separated, no header
# Rows read, predicted and written at a time: memory is bounded by one chunk (Criteo rows: ~0.2 GB above the imports'
# ~1 GB, measured), whatever the file's size. Images: files read at a time.
CHUNK, IMAGE_CHUNK = 65536, 1024


def image_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserInputError(f"input={path}: no {'/'.join(IMAGE_SUFFIXES)} files in that folder")
        return files
    return [path]


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale (PNG, TIFF: PIL modes "I;16", "I") scaled to 0..255, as 8-bit images are; PIL's own
    convert("L") clips every value above 255 to white. A 32-bit integer image (mode "I") holding 0..255 is kept.
    Floating-point grey (mode "F", a TIFF saved from numpy) holding 0..1 is scaled to 0..255 too (convert("L")
    would round it to black); one holding 0..255 is kept."""
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = values * 255 if values.max(initial=0) <= 1 else values
        return Image.fromarray(values.round().clip(0, 255).astype(np.uint8))
    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit (I;16 always; I, a 16-bit PNG's mode, unless it holds no value above 255: a TIFF of int32 0..255)
        wide = image.mode.startswith("I;16") or values.max(initial=0) > 255
        scaled = Image.fromarray((values / 257 if wide else values).round().clip(0, 255).astype(np.uint8))
        if isinstance(image.info.get("transparency"), int):  # a 16-bit transparent grey level: its 8-bit one
            scaled.info["transparency"] = round(image.info["transparency"] / (257 if wide else 1))
        return scaled
    return image


def has_alpha(image: Image.Image) -> bool:
    """RGBA, LA, a palette or grey with a transparent colour."""
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def opaque(image: Image.Image) -> Image.Image:
    """Transparent pixels laid over black, the background of MNIST and Fashion-MNIST: PIL's convert() would drop the
    alpha and keep whatever colour hides under it."""
    if has_alpha(image):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image)
    return image


def light_background(image: Image.Image) -> bool:
    """A grey image whose outermost pixels are light on average: a dark drawing or item on white. (No image of
    Fashion-MNIST's 70,000 has a border above 108 of 255 on average, and 16 of its 10,000 test images cropped to
    their items' bounding boxes one above 127.5; MNIST's borders are black.)"""
    pixels = np.asarray(image, dtype=np.float64)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return border.mean() > 127.5


def dark_cut_out(image: Image.Image) -> bool:
    """A dark item on a transparent background (a drawing from a canvas, a product photo cut out): an image whose
    outermost pixels are mostly transparent, and whose visible ones are almost all dark (under 5% of them light,
    weighted by their opacity). Laid over black as it is, it would vanish. A light item cut out is already light on
    black, and so is a light one on an opaque dark patch (an MNIST tile with a transparent margin, a round avatar):
    each is left to the border's judgement (light_background)."""
    if not has_alpha(image):
        return False
    rgba = image.convert("RGBA")
    grey, alpha = (np.asarray(channel, dtype=np.float64) for channel in (rgba.convert("L"), rgba.getchannel("A")))
    border = np.concatenate([alpha[0], alpha[-1], alpha[1:-1, 0], alpha[1:-1, -1]])
    return border.mean() < 127.5 and alpha.sum() > 0 and alpha[grey > 127.5].sum() < 0.05 * alpha.sum()


def inverted_grey(image: Image.Image) -> Image.Image:
    """Grey with its shades inverted, its transparency kept (LA): a dark item cut out on a transparent background
    becomes a light one on black, as the training items are, once transparent pixels are laid over black."""
    if has_alpha(image):
        rgba = image.convert("RGBA")
        return Image.merge("LA", (ImageOps.invert(rgba.convert("L")), rgba.getchannel("A")))
    return ImageOps.invert(image.convert("L"))


def read_images(files: list[Path], channels: int, size: tuple[int, int], invert: str = "auto",
                inverted: list[Path] | None = None) -> torch.Tensor:
    """uint8 (N, channels, H, W): each file converted to grey (1 channel) or RGB (3) and fitted to `size` as the
    training images were made. Grey: light on black (MNIST, Fashion-MNIST), so an image on a light background, or a
    dark item cut out on a transparent one, is inverted (invert="auto"; the files it inverts are added to `inverted`;
    "true": every image's shades, a transparent background staying black; "false": none), then scaled whole into
    `size` and centred on black (Fashion-MNIST's items were scaled by their longest side and padded; stretched, a
    tall or wide one was misread). RGB (CIFAR-10's photographs): scaled to cover `size`, the overhang cropped
    evenly (an image of `size`'s shape is only scaled, in both cases)."""
    if channels not in (1, 3):
        raise UserInputError(f"the network takes {channels}-channel images; predict.py reads grey (1) or RGB (3)")
    images = []
    for file in files:
        try:
            image = Image.open(file)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise UserInputError(f"input {file}: not a readable image ({err})") from err  # (a bomb: > 179M pixels)
        try:
            with image:
                mode = image.mode
                image = eight_bit(ImageOps.exif_transpose(image))  # upright as viewers show it (EXIF orientation)
                # a cut-out's shades are inverted before its transparent background is made black
                cut_out = channels == 1 and invert == "auto" and dark_cut_out(image)
                if channels == 1 and invert == "true" or cut_out:
                    image = inverted_grey(image)
                image = opaque(image).convert("L" if channels == 1 else "RGB")
        # (SyntaxError, struct.error: PIL's for a damaged EXIF block)
        except (OSError, SyntaxError, struct.error, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise UserInputError(f"input {file}: not a readable image ({err})") from err
        except ValueError as err:  # a mode PIL cannot convert (CIELab, ...)
            raise UserInputError(f"input {file}: a {mode} image, which predict.py cannot turn into "
                                 f"{'grey' if channels == 1 else 'RGB'} ({err}); save it as grey or RGB") from err
        if channels == 1:
            lit = invert == "auto" and not cut_out and light_background(image)
            if lit:
                image = ImageOps.invert(image)
            if (lit or cut_out) and inverted is not None:
                inverted.append(file)
            image = ImageOps.pad(image, size[::-1], Image.BILINEAR, color=0)
        else:
            image = ImageOps.fit(image, size[::-1], Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8).reshape(size[0], size[1], channels)
        images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))  # (C, H, W)
    return torch.stack(images)


@torch.no_grad()
def predict_images(recipe, datamodule, files: list[Path], invert: str = "auto", inverted: list[Path] | None = None
                   ) -> pd.DataFrame:
    """The table of `files`' predictions; those that invert="auto" inverted are added to `inverted`."""
    kwargs = recipe.hparams.net_kwargs
    if recipe.hparams.task != "multiclass" or "image_size" not in kwargs:
        raise UserInputError(f"this checkpoint's network ({recipe.hparams.config['model']['net']['_target_']}) "
                             "does not classify images; give it what it was trained on")
    if getattr(datamodule, "mean", None) is None:
        raise UserInputError(f"{type(datamodule).__name__} has no mean/std: cannot normalize images as in training")
    if invert == "true" and kwargs["in_channels"] != 1:
        raise UserInputError(f"invert=true: this network takes {kwargs['in_channels']}-channel (colour) images, "
                             "which are never inverted; invert is for greyscale networks")
    images = read_images(files, kwargs["in_channels"], tuple(kwargs["image_size"]), invert, inverted)
    mean, std = datamodule.mean.view(1, -1, 1, 1), datamodule.std.view(1, -1, 1, 1)
    x = (images.float() / 255 - mean) / std  # (N, C, H, W), as data.images normalizes training batches
    probs = recipe(x).float().softmax(-1)  # (N, classes); N <= IMAGE_CHUNK
    classes = class_names(datamodule, probs.shape[1])
    best = probs.argmax(1)
    table = pd.DataFrame({"file": [str(f) for f in files], "class": [classes[i] for i in best],
                          "probability": probs.gather(1, best[:, None])[:, 0].numpy()})
    return pd.concat([table, pd.DataFrame(probs.numpy(), columns=classes)], axis=1)


@torch.no_grad()
def predict_rows(recipe, datamodule, path: Path) -> Iterator[pd.DataFrame]:
    if not hasattr(datamodule, "encode_frame"):
        raise UserInputError(f"input={path}: this run was trained on {type(datamodule).__name__} data, whose rows "
                             "predict.py cannot read: rows are for models trained with data=csv, advertising, "
                             "clicks or criteo")
    # As its training data was read; a DataModule of the user's without read_frames: a CSV file.
    reader = getattr(datamodule, "read_frames", read_csv_rows)
    where = CsvRows("input", path) if path.suffix.lower() == ".csv" else f"input={path}"  # str(): the input's name
    for frame in reader(path, CHUNK):
        inputs = datamodule.encode_frame(frame, where=where)  # raises UserInputError naming a bad row
        logits = recipe(*inputs).float() if len(frame) else torch.zeros(0, 1)
        probs = probabilities(logits, recipe.hparams.task)  # (N,) click probabilities, or (N, classes)
        if recipe.hparams.task == "binary":
            yield frame.assign(click_probability=probs.numpy())
        else:
            classes = class_names(datamodule, probs.shape[1])
            yield frame.assign(**{"class": [classes[i] for i in probs.argmax(1)], "probability": probs.amax(1).numpy()})


def predict_chunks(ckpt_path: str | Path, input_path: str | Path, data_overrides: list[str] = (),
                   invert: str = "auto") -> Iterator[pd.DataFrame]:
    """The predictions, one table per CHUNK rows (IMAGE_CHUNK images) of the input, in its order. `invert`: for
    images of a greyscale network, auto (those dark on a light or transparent background), true or false (see
    read_images)."""
    if invert not in ("auto", "true", "false"):
        raise UserInputError(f"invert={invert}: give auto (images dark on a light or transparent background), true "
                             "or false")
    checkpoint = load_checkpoint(ckpt_path)  # a missing or foreign file is a one-line error, before anything is built
    path = Path(input_path)
    if not path.exists():
        raise UserInputError(f"input={path}: no such file or folder")
    if not (path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES + ROW_SUFFIXES):
        raise UserInputError(f"input={path}: give a folder of images, an image ({', '.join(IMAGE_SUFFIXES)}), a .csv "
                             "or Criteo's tab-separated .txt/.tsv")
    recipe = load_recipe(str(ckpt_path)).eval()
    if recipe.hparams.task == "lm":
        raise UserInputError("this checkpoint is a language model: sample text with generate.py")
    datamodule = fitted_datamodule(checkpoint, data_overrides)
    if path.is_file() and path.suffix.lower() in ROW_SUFFIXES:
        if invert != "auto":
            raise UserInputError(f"invert={invert} is for images; input={path} holds rows: leave it out")
        yield from predict_rows(recipe, datamodule, path)
        return
    files, inverted = image_files(path), []
    for start in range(0, len(files), IMAGE_CHUNK):
        yield predict_images(recipe, datamodule, files[start:start + IMAGE_CHUNK], invert, inverted)
    if inverted:  # on stderr, once: the CSV stays the predictions
        print(f"note: {len(inverted)} of {len(files)} images ({inverted[0]}{', ...' if len(inverted) > 1 else ''}) "
              "are dark on a light or transparent background and were inverted to light on black, as the training "
              "images are; "
              "invert=false reads them as they are", file=sys.stderr)


def predict(ckpt_path: str | Path, input_path: str | Path, data_overrides: list[str] = (), invert: str = "auto"
            ) -> pd.DataFrame:
    """Every prediction in one table (for a notebook; main() writes them chunk by chunk)."""
    return pd.concat(list(predict_chunks(ckpt_path, input_path, data_overrides, invert)), ignore_index=True)


@contextmanager
def output(out: str | None):
    """Where the CSV goes: stdout, or out=FILE written whole or not at all (`written_whole`): an error or Ctrl-C
    halfway leaves an earlier FILE as it was."""
    if not out:
        with writes_reported("stdout"):  # (a full disk behind `> FILE`)
            yield sys.stdout
            sys.stdout.flush()  # here, where main catches a closed pipe, not at exit (a traceback Python prints itself)
        return
    with written_whole(out, newline="") as f:
        yield f


def main(argv: list[str]) -> int:
    options, rows = {}, 0
    try:
        options, data, trainer = parse_arguments(argv, USAGE, required=("ckpt_path", "input"),
                                                 optional=("out", "invert"), out_name="predictions.csv")
        if trainer:
            raise UserInputError(f"trainer.{next(iter(trainer))}: predict.py runs no Trainer; usage: {USAGE}")
        with output(options.get("out")) as f:
            chunks = predict_chunks(options["ckpt_path"], options["input"], data, options.get("invert", "auto"))
            for i, table in enumerate(chunks):
                table.to_csv(f, index=False, header=i == 0, float_format=None if options.get("out") else "%.4f")
                rows += len(table)
    except UserInputError as err:
        printed = f" (the {count(rows, 'row')} before it went to stdout)" if rows and not options.get("out") else ""
        print(f"error: {err}{printed}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`| head`)
        return stdout_closed()
    if options.get("out"):
        print(f"{rows} predictions written to {options['out']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
