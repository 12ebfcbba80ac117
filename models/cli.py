"""What the command line needs besides the recipe: the arguments checked and rewritten before Hydra sees them
(`trainer.NAME=` for any Trainer argument, `resume=RUN_DIR`, the ranks of a DDP run sharing one run directory),
a run's saved config kept when it fails, and the run's train.log. Checks of the composed config are in
models/checks.py and models/signatures.py; sweeps' summaries in models/sweeps.py."""
import argparse
import copy
import difflib
import inspect
import itertools
import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import lightning as L
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from data import UserInputError, check_folder
from models.checks import CONFIGS, check_config, check_model_reads_data, check_settings, check_sweep, flatten
from models.records import read_metrics, read_overrides
from models.sweeps import check_study
from models.signatures import not_a_trainer_argument


GRAMMAR = "https://hydra.cc/docs/1.2/advanced/override_grammar/basic"


def hydra_overrides(argv: list[str]) -> list[str]:
    """The overrides among the arguments, as Hydra's own parser tells them from its flags and their values (`--cfg
    job`, `--info config`, `-cn NAME`); none where it refuses a flag (`--cfg jobs`): Hydra then says so."""
    parser = get_args_parser()
    parser.exit_on_error = False  # a bad flag raises here instead of printing usage and exiting

    def refuse(message: str) -> NoReturn:
        raise argparse.ArgumentError(None, message)

    parser.error = refuse
    try:
        return list(parser.parse_args(argv).overrides)
    except argparse.ArgumentError:
        return []


def flags_first(argv: list[str]) -> list[str]:
    """Hydra's flags (with their values) before the overrides: its parser reads the overrides as one run of
    arguments, so one added at the end (the run directory claimed below) must not follow a flag that came last
    (`python train.py seed=1,2 -m`). `--info` without a topic gets its default, `all` (it would read the first
    override as one); `--hydra-help` keeps the `hydra` overrides alone; `hydra.mode=MULTIRUN` becomes `--multirun`,
    which the sweep checks look for (as does `hparams_search=NAME`, whose preset sets it); two of Hydra's modes at
    once are refused."""
    overrides = hydra_overrides(argv)
    rest = list(argv)
    for override in overrides:
        rest.remove(override)
    for at, flag in enumerate(rest):  # `--info` takes an optional value: before an override it would read that one
        if flag in ("--info", "-i") and (at + 1 == len(rest) or rest[at + 1] not in INFO_TOPICS):
            rest.insert(at + 1, "all")  # its value when none is given
            break
    modes = [flag for flag in rest if flag in MODES or flag in MODES.values()]
    if len({MODES.get(flag, flag) for flag in modes}) > 1:  # Hydra's ValueError, a traceback
        raise UserInputError(f"{' and '.join(modes)}: Hydra takes one of --multirun, --cfg, --info and "
                             "--shell-completion at a time: drop all but one")
    if "--hydra-help" in rest:  # Hydra's help composes its own config alone: `model=cnn` there is a traceback
        overrides = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    multirun = [o for o in overrides if o.lstrip("+") == "hydra.mode=MULTIRUN"]  # Hydra's other spelling of -m
    if multirun and {MODES.get(flag, flag) for flag in modes} <= {"--multirun"}:  # (with --cfg: Hydra's business)
        overrides = [o for o in overrides if o not in multirun]
        rest = rest if modes else ["--multirun", *rest]
    # A search preset sets hydra.mode: MULTIRUN itself, so `hparams_search=NAME` without -m is a sweep too: the
    # sweep's checks (before the study starts) and folder (no run directory claimed) are -m's. (resume= of a trial
    # is one run: resume_arguments adds the trial's own hparams_search= with hydra.mode=RUN.)
    keys = [o.lstrip("+").partition("=") for o in overrides]
    search = any(key == "hparams_search" and value.lower() not in ("", "null") for key, _, value in keys)
    other = [flag for flag in rest  # `--cfg=job` too, as argparse reads it
             if flag.partition("=")[0] in (*MODES, *MODES.values(), "-h", "--help", "--hydra-help")]
    if search and not other and not any(key in ("hydra.mode", "resume") for key, _, _ in keys):
        rest = ["--multirun", *rest]
    return rest + overrides


MODES = {"-m": "--multirun", "-c": "--cfg", "-i": "--info", "-sc": "--shell-completion", "-r": "--run"}  # short: long
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")  # Hydra's --info choices


def check_flags(argv: list[str]) -> None:
    """`--max_epochs=5`, `--batch-size 64` (another program's habit), which argparse refuses with its usage page: one
    line naming the setting meant. (A known flag's bad value, `--cfg jobs`, is Hydra's to report.)"""
    parser = get_args_parser()
    parser.exit_on_error = False

    def refuse(message: str) -> NoReturn:
        raise argparse.ArgumentError(None, message)

    parser.error = refuse
    try:
        unknown = parser.parse_known_args(argv)[1]
    except argparse.ArgumentError:
        return
    if (flag := next((a for a in unknown if a.startswith("-")), None)) is None:
        return
    name, equals, value = flag.lstrip("-").partition("=")
    if not equals:  # `--batch-size 64`: its value is the next word
        after = argv[argv.index(flag) + 1:]
        value = after[0] if after and not after[0].startswith("-") and "=" not in after[0] else ""
    if key := setting_named(name.replace("-", "_"), argv):
        raise UserInputError(f"{flag}: train.py takes settings as key=value, without dashes: {key}="
                             f"{value or '...'} (python train.py --help lists its flags)")
    raise UserInputError(f"{flag} is not a flag of train.py (python train.py --help lists them); settings are "
                         "key=value, without dashes (python train.py --cfg job lists them)")


def setting_named(name: str, argv: list[str]) -> str | None:
    """The setting whose last part is `name` (`max_epochs` -> trainer.max_epochs, `model` -> model, a config group),
    in the config `argv`'s choices compose (model=dnn: its keys); the shortest where several are; None if none is."""
    if name and (CONFIGS / name).is_dir():
        return name
    choices = [a for a in argv if "=" in a and (CONFIGS / a.split("=", 1)[0].lstrip("+~")).is_dir()]
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            keys = list(flatten(OmegaConf.to_container(compose("train", overrides=choices), resolve=False)))
    except Exception:  # a choice is wrong too: it is refused next
        keys = []
    keys += [f"trainer.{k}" for k in inspect.signature(L.Trainer.__init__).parameters]  # any Trainer argument
    named = sorted((k for k in keys if k.rpartition(".")[2] == name), key=len)
    return named[0] if named else None


def check_syntax(argv: list[str]) -> None:
    """Each `key=value` as Hydra's grammar reads it, `hydra.*` ones too (Hydra itself would print a page): an
    unquoted character it does not take (a letter outside ASCII, as in a path) is one line that names it and
    shows the quoting that works. A flag Hydra does not have is refused first."""
    check_flags(argv)
    for arg in hydra_overrides(argv):
        try:
            OverridesParser.create().parse_overrides([arg])
        except OverrideParseException as err:
            first, *rest = str(err).splitlines()
            lexer = "LexerNoViableAltException: "
            at = rest[0].find("^") - len(lexer) if first.startswith(lexer) and rest else -1
            key, _, value = arg.partition("=")
            if 0 <= at < len(arg):  # the caret under the first character the lexer refused
                raise UserInputError(f"{arg}: Hydra cannot read the unquoted {arg[at]!r}; quote the value, as in "
                                     f"\'{key}=\"{value}\"\' (see {GRAMMAR})") from None
            if "=" in value and reads_quoted(key, value):  # `hydra.run.dir=runs/lr=0.1`: an `=` in a path
                first += f"; quote the value, as in \'{key}=\"{value}\"\'"
            raise UserInputError(f"{arg}: {first} (see {GRAMMAR})") from None


def reads_quoted(key: str, value: str) -> bool:
    """Whether Hydra's grammar reads `key="value"`, the quoting to suggest for a value it cannot read as typed."""
    try:
        OverridesParser.create().parse_overrides([f'{key}="{value}"'])
    except OverrideParseException:
        return False
    return '"' not in value


def check_overrides(argv: list[str]) -> None:
    """Compose the config up front, so a misspelled key or an unknown choice is one line, not a page; under
    `-m`, once for each value of each swept setting (the others at their first value), up to MAX_CHECKED."""
    flags = [a for a in argv if a.startswith("-")]
    if any(flag not in ("-m", "--multirun") for flag in flags):  # --cfg, --help, ...: Hydra's own business
        return
    overrides = [a for a in argv if not a.startswith(("-", "hydra.", "+hydra."))]
    check_one_config_each(overrides)
    check_hydra_values(argv, (sweep_variants(overrides) or [overrides])[0] if flags else overrides)
    if flags:
        check_study_goes_on(argv, overrides)
    for variant in sweep_variants(overrides) if flags else [overrides]:
        try:
            with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
                cfg = compose("train", overrides=variant, return_hydra_config=True)
        except Exception as err:
            message = " ".join(str(err).split("Config search path")[0].split())
            if message.startswith("Config group override must be a string or a list. Got "):
                message = group_given_a_value(variant) or message
            if missing := re.match(r"Could not override '([^']+)'\. To append", message):  # a misspelt key
                message = misspelt_key(missing[1], variant) or message
            raise UserInputError(f"{message} (see `python train.py --help`)") from err
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices)  # model=cnn, also from a default or a preset
        HydraConfig.instance().set_config(copy.deepcopy(cfg))  # `paths.data_dir=${hydra:runtime.cwd}/data` resolves
        with open_dict(cfg):
            del cfg["hydra"]  # the run's config alone, as the job will see it
        # Before Hydra writes .hydra/: a bad value never reaches a run's saved config.
        try:
            if not flags:
                check_config(cfg, choices)  # choices: `model=cnn` named as typed, also when it came from a default
            else:  # what would stop the sweep at its first job stops it before (mismatched jobs fail alone, as ever)
                if choices.get("hparams_search"):  # but a trial's error ends an Optuna study: no trial may mismatch
                    check_model_reads_data(cfg, choices)
                check_settings(cfg)
                check_sweep(cfg)
        except InterpolationResolutionError as err:  # `model.lr=${oc.env:UNSET}`
            raise UserInputError(f"{err.full_key}: {str(err).splitlines()[0]}") from None
        finally:
            HydraConfig.instance().cfg = None  # Hydra sets the job's own


def check_hydra_values(argv: list[str], overrides: list[str]) -> None:
    """Hydra's own settings of the wrong type (`hydra.sweeper.n_trials=abc`, `hydra.job.chdir=maybe`: Hydra's page),
    and a study of no trials (`hydra.sweeper.n_trials=0`: Optuna's traceback once the empty study ends), composed with
    the choices `overrides` make (hparams_search=NAME picks the sweeper). The run and sweep folders are checked
    apart."""
    settings = [a for a in argv if a.lstrip("+").startswith("hydra.") and not a.lstrip("+").startswith(
        ("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode="))]
    if not settings:
        return
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", overrides=overrides + settings, return_hydra_config=True)
    except Exception as err:
        cause = next(iter(str(err.__cause__ or "").splitlines()), "")
        merging = re.match(r"Error merging override (\S+)", str(err))
        if merging and cause:  # the value's problem, on the override's line
            raise UserInputError(f"{merging[1]}: {cause} (see `python train.py --hydra-help`)") from None
        if (unknown := re.match(r"Could not override '(hydra\.[^']+)'", str(err))) is None:
            return  # another problem (a misspelt key, a bad choice) is said next, as for any other override
        search = unknown[1].startswith("hydra.sweeper.") and not any(
            o.lstrip("+").startswith("hparams_search=") for o in overrides)  # Hydra's basic sweeper has no n_trials
        raise UserInputError(f"{unknown[1]} is not a setting of Hydra here (`python train.py --cfg hydra` lists them)"
                             + (f"; an Optuna study's come with hparams_search={group_configs('hparams_search')}"
                                if search else "")) from None
    trials = OmegaConf.select(cfg, "hydra.sweeper.n_trials", default=None)
    if trials is not None and trials < 1:
        raise UserInputError(f"hydra.sweeper.n_trials={trials}: give a whole number of trials >= 1")


def check_study_goes_on(argv: list[str], overrides: list[str]) -> None:
    """`-m hparams_search=...` where its study exists already: the search must rank its trials as the study did
    (`check_study`), composed with every Hydra setting given (the study's name and folder)."""
    settings = [a for a in argv if a.lstrip("+").startswith("hydra.") and not a.lstrip("+").startswith("hydra.mode=")]
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", overrides=overrides + settings, return_hydra_config=True)
    except Exception:
        return  # the checks that follow say what is wrong
    if not cfg.hydra.runtime.choices.get("hparams_search"):
        return
    HydraConfig.instance().set_config(cfg)  # `paths.log_dir` in the study's folder resolves
    try:
        check_study(cfg.hydra.sweeper, cfg.monitor, cfg.data)
    finally:
        HydraConfig.instance().cfg = None


def misspelt_key(key: str, overrides: list[str]) -> str | None:
    """`model.lrr=0.1`: the setting it was meant for, where the config has one with a name close to it. (Hydra's
    advice, `+model.lrr=0.1`, would add a key that nothing reads, refused in turn.)"""
    parent, _, name = key.rpartition(".")
    choices = [o for o in overrides if (CONFIGS / o.split("=", 1)[0].lstrip("+~")).is_dir()]  # model=dnn: its keys
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            node = compose("train", overrides=choices)
    except Exception:  # a choice is wrong too: Hydra's message about this key stands
        return None
    node = OmegaConf.select(node, parent) if parent else node
    # (`~data.rows data.rows=5`: the key itself, deleted on the command line, is not its own misspelling)
    keys = [str(k) for k in node.keys() if k != name] if isinstance(node, DictConfig) else []
    near = difflib.get_close_matches(name, keys, n=1)
    return f"{key} is not a setting train.py reads; did you mean {parent}{'.' if parent else ''}{near[0]}?" if near \
        else None


def check_hydra_settings(args: dict[str, str]) -> None:
    """Hydra's own settings a run of this project relies on: its saved config (.hydra/, which resume=, eval.py and
    the notebooks read) and the working directory (relative paths on the command line are the user's). (The other
    ranks of a multi-process run are started with hydra.output_subdir=null: rank 0 writes .hydra/.)"""
    if other_rank():
        return
    if (subdir := args.get("hydra.output_subdir", ".hydra")) != ".hydra":
        raise UserInputError(f"hydra.output_subdir={subdir}: a run keeps its config in .hydra/ (resume=, eval.py and "
                             "the notebooks read it there): leave it out")
    if args.get("hydra.job.chdir", "").lower() in ("true", "yes", "on", "y", "1"):  # (as OmegaConf reads a bool)
        raise UserInputError(f"hydra.job.chdir={args['hydra.job.chdir']}: a relative path you give (data.path=, "
                             "paths.data_dir=) would be read from the run directory; the run's files go to "
                             "hydra.run.dir anyway: leave it out")


def check_one_config_each(overrides: list[str]) -> None:
    """`model=[cnn,dnn]`: Hydra would merge both configs into one (`data=[]`: none), and the run fail on whatever
    they left or lacked. Each of this project's groups takes one config (a sweep over them: `-m model=cnn,dnn`)."""
    for override in parsed_overrides(overrides):
        group = override.key_or_group
        if not override.is_sweep_override() and isinstance(override.value(), list) and (CONFIGS / group).is_dir():
            raise UserInputError(f"{override.input_line}: {group} takes one of its configs ({group_configs(group)}), "
                                 f"not a list; to run several, sweep them: -m {group}=A,B")


def parsed_overrides(overrides: list[str]) -> list:
    """Hydra's reading of `overrides`, or none where it cannot read them (Hydra reports that itself)."""
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        return []


def group_configs(group: str) -> str:
    """`cnn, dnn, lstm`: the configs of a group of configs/."""
    return ", ".join(sorted(path.stem for path in (CONFIGS / group).glob("*.yaml")))


def group_given_a_value(overrides: list[str]) -> str | None:
    """`logger=null`, `optimizer=5`: what Hydra's "Config group override must be a string or a list. Got NoneType"
    is about, and the fixes."""
    for override in parsed_overrides(overrides):
        group, value = override.key_or_group, override.value()
        if (CONFIGS / group).is_dir() and not override.is_delete() and (value is None or
                                                                        isinstance(value, bool | int | float)):
            without = {"logger": "; ~logger runs without one", "callbacks": "; callbacks.NAME=null drops one"}
            return (f"{override.input_line.lstrip('+')}: {group} is a config group: choose one of its configs "
                    f"({group_configs(group)})" + without.get(group, ""))
    return None


MAX_CHECKED = 20  # command lines composed for a sweep: ~0.2 s each


def override_values(override) -> list[str]:
    """`a=1,2` -> [a=1, a=2]; `a=1` -> [a=1]; a range or glob -> [] (the config's value)."""
    try:
        if override.is_choice_sweep() or override.is_range_sweep():
            return [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
        return [] if override.is_sweep_override() else [override.input_line]
    except Exception:  # a glob needs Hydra's config loader to list the options it matches
        return []


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """`a=1,2 b=x,y` -> [a=1 b=x], [a=2 b=x], [a=1 b=y]: every value once, taking the swept settings' second
    values first, then their third, ... (a long `seed=range(30)` does not crowd out `lr=0.1,abc`). A range
    (`interval(...)`, which Optuna samples) or a `glob(...)` of config options keeps the config's value; an override
    Hydra cannot parse is left for Hydra to report."""
    try:
        values = [override_values(o) for o in OverridesParser.create().parse_overrides(overrides)]
    except Exception:
        return []
    swept = [i for i, choices in enumerate(values) if choices]
    first = [values[i][0] for i in swept]
    variants = [first]
    for rank in range(1, max(map(len, values), default=1)):
        variants += [first[:at] + [values[i][rank]] + first[at + 1:]
                     for at, i in enumerate(swept) if rank < len(values[i])]
    return variants[:MAX_CHECKED]


def trainer_arguments(argv: list[str]) -> list[str]:
    """`trainer.NAME=VALUE` sets any Lightning Trainer argument, also one configs/trainer/ does not list (Hydra alone
    would want `+trainer.NAME=`): passed on as `++trainer.NAME=VALUE`, set or add. A NAME the Trainer does not
    take is refused, with the nearest names."""
    names = list(inspect.signature(L.Trainer.__init__).parameters)
    passed = []
    for arg in argv:
        name, _, inner = arg.split("=", 1)[0].removeprefix("trainer.").partition(".")  # inner: trainer.strategy.x
        if arg.startswith("trainer.") and "=" in arg and not name.startswith("_"):  # _target_: Hydra's
            if name not in names:
                raise not_a_trainer_argument(name)
            arg = arg if inner else f"++{arg}"
        passed.append(arg)
    return passed


def quoted(value: str) -> str:
    """`value` quoted for Hydra's grammar, which takes no letter outside ASCII unquoted (a folder /tmp/josé): in its
    quoted strings a backslash is itself but before the closing quote or a quote, where it is doubled."""
    return '"' + re.sub(r'(\\*)("|$)', lambda m: 2 * m[1] + ("\\" + m[2] if m[2] else ""), value) + '"'


def unquoted(value: str) -> str:
    """A value as Hydra reads it: `"/tmp/rün"` (quoted for its grammar) is the folder /tmp/rün."""
    if len(value) < 2 or value[0] != value[-1] or value[0] not in "'\"":
        return value
    quote = value[0]  # each backslash run before a quote or the end stands for half as many; then the quote
    return re.sub(rf"(\\+)({quote}|$)", lambda m: m[1][: len(m[1]) // 2] + m[2], value[1:-1])


def resume_arguments(argv: list[str]) -> list[str]:
    """`resume=RUN_DIR` -> that run's own overrides + its run directory + `ckpt_path=last`. Also refuses output folders
    that cannot be written, a fresh run in a directory that holds one (it would overwrite its config and metrics) and
    a grid sweep over an earlier one's jobs; drops `ckpt_path=last` where `hydra.run.dir` holds no run yet."""
    argv = home_expanded(argv)
    pairs = [a.split("=", 1) for a in argv if "=" in a and not a.startswith("-")]
    for key, value in pairs:  # null (Hydra's grammar: any case), not "null", a folder's name
        if key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") and value.lower() == "null":
            raise UserInputError(f"{key.lstrip('+')}={value}: give a folder, or leave it out for one under outputs/")
    args = {key.lstrip("+"): unquoted(value) for key, value in pairs}  # ++hydra.run.dir=... too
    check_hydra_settings(args)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if "paths.output_dir" in args:  # the run would write there, and Hydra's .hydra/ and train.log elsewhere
        raise UserInputError("paths.output_dir is the run directory Hydra makes: give hydra.run.dir=DIR instead "
                             "(an earlier run there is refused, not overwritten)")
    if "resume" in args:
        if not args["resume"]:
            raise UserInputError("resume= is empty: give the run directory to continue, resume=outputs/MODEL/DATE_TIME")
        if (run := Path(args["resume"])).is_file():  # RUN/checkpoints/last.ckpt
            folder = run.parent.parent if run.parent.name == "checkpoints" else run.parent
            raise UserInputError(f"resume={run} is a file: resume takes the run's directory, resume={folder}")
        return resumed(run, argv, multirun)
    check_writable_folders(args)
    check_sweep_dir(args, multirun)
    return run_dir_arguments(args, argv, multirun)


def home_expanded(argv: list[str]) -> list[str]:
    """hydra.run.dir="~/runs/x" (quoted, as Hydra's grammar needs a '~' to be) is the folder in the home directory,
    as a shell would read it: Hydra would make a folder named '~' in the working directory."""
    expanded = []
    for a in argv:
        key, sep, value = a.partition("=")
        if sep and key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir", "resume") and unquoted(value)[:1] == "~":
            a = f"{key}={quoted(os.path.expanduser(unquoted(value)))}"
        expanded.append(a)
    return expanded


def resumed(run: Path, argv: list[str], multirun: bool) -> list[str]:
    """`resume=run` and whatever else `argv` gives -> the run's saved overrides, then those given, its directory and
    `ckpt_path=last`; without that where the run stopped before its first checkpoint (it starts again)."""
    by_hand = f"continue it by hand: python train.py <its settings> hydra.run.dir={run} ckpt_path=last"
    if multirun:
        raise UserInputError(f"resume={run} continues one run: drop -m")
    if not run.exists():  # a misspelt run: "continue it by hand" would start a new run in the folder it names
        try:
            runs = [p.name for p in run.parent.iterdir() if p.is_dir()]
        except OSError:  # its parent is missing too (or unreadable)
            runs = []
        near = difflib.get_close_matches(run.name, runs, n=1)
        raise UserInputError(f"resume={run}: no such folder; " + (f"did you mean resume={run.parent / near[0]}?" if near
                             else "give the directory of the run to continue, as in resume=outputs/MODEL/DATE_TIME"))
    saved = run / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise UserInputError(f"resume={run}: no {saved}, where resume reads the run's settings; {by_hand}")
    try:
        kept = [a for a in read_overrides(run) if not a.startswith(("hydra.run.dir=", "ckpt_path="))]
    except UserInputError:  # giving the settings along with resume= would not help: it reads the file
        raise UserInputError(f"resume={run}: {saved} is not the list of overrides Hydra writes; {by_hand}") from None
    typed = hydra_overrides(argv)
    flags = [a for a in argv if a not in typed]  # `--cfg job`: before every override, as Hydra reads them
    given = [a for a in typed if not a.startswith("resume=") and not restates_resume(a, run)]
    for a in given:  # were overridden by the run's own, or (model=) failed in Hydra with advice to add keys
        key, _, value = a.lstrip("+~").partition("=")
        if key in ("hydra.run.dir", "ckpt_path"):
            raise UserInputError(f"resume={run} continues that run in its own directory from its last checkpoint: "
                                 f"drop {a}")
        if key in ("model", "data", "experiment") and value != (run_choices(run, kept).get(key) or "null"):
            raise UserInputError(f"resume={run}: {a} would change what the run trains on or with; a resumed run "
                                 "keeps its model and data: start a new run with it instead")
    # What the run had already: its model=, data=, experiment= choices (checked equal above), or the last value one
    # of its overrides gave a key (`++trainer.KEY=` as saved), restated
    had = {a.lstrip("+~").partition("=")[0]: a.lstrip("+") for a in kept}
    changes = [a for a in given if (key := a.lstrip("+~").partition("=")[0]) not in ("model", "data", "experiment")
               and had.get(key) != a.lstrip("+")]
    if (run / "metrics.json").is_file() and not flags + changes:  # re-running its test would only rewrite metrics.json
        raise UserInputError(f"resume={run}: {nothing_to_continue(read_metrics(run))}")
    last = run / "checkpoints" / "last.ckpt"
    # No checkpoint at all: it stopped before its first (a bad setting, as a sweep's failed job; a kill), and starts
    # again. A best.ckpt alone (last checkpoints turned off) is never trained over: ckpt_path=last says what is missing.
    if not any((run / "checkpoints").glob("*.ckpt")) and not (run / "metrics.json").is_file():
        if not other_rank():
            print(f"warning: resume={run}: no {last}, the run stopped before it saved one; it starts again from its "
                  "first step there", file=sys.stderr)
        resume = []
    else:
        resume = ["ckpt_path=last"]
    # hydra.mode=RUN: an Optuna trial's overrides hold hparams_search=..., whose preset starts a study
    return flags + kept + given + [f"hydra.run.dir={quoted(str(run))}", *resume, "hydra.mode=RUN"]


def restates_resume(override: str, run: Path) -> bool:
    """`ckpt_path=last` or `hydra.run.dir=RUN`, which resume=RUN adds itself."""
    key, _, value = override.lstrip("+").partition("=")
    return (key == "ckpt_path" and value == "last"
            or key == "hydra.run.dir" and Path(unquoted(value)).expanduser().resolve() == run.expanduser().resolve())


def run_choices(run: Path, overrides: list[str]) -> dict:
    """The config-group choices a run was composed with (`model: cnn`, also those a default or a preset made), from
    its .hydra/hydra.yaml; else those its overrides name."""
    try:
        return yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return dict(o.partition("=")[::2] for o in overrides if "=" in o)


def check_writable_folders(args: dict[str, str]) -> None:
    """hydra.run.dir and hydra.sweep.dir name folders that can be made and written (Hydra would make them: a
    traceback if it cannot)."""
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        if args.get(key) == "":  # Hydra would take the working directory, the repository root
            raise UserInputError(f"{key}= is empty: give a folder, or leave it out for one under outputs/")
        if args.get(key):
            existing = check_folder(key, Path(args[key]))
            try:  # writable? (os.access says yes to root on a read-only or virtual file system)
                os.rmdir(tempfile.mkdtemp(dir=existing))
            except OSError as err:
                raise UserInputError(f"{key}={args[key]}: cannot make folders in {existing} ({err.strerror}); "
                                     "choose a directory you can write to") from None


def check_sweep_dir(args: dict[str, str], multirun: bool) -> None:
    """A grid sweep's jobs are folders 0, 1, ... of hydra.sweep.dir (or what hydra.sweep.subdir names): a second
    sweep there would overwrite them. (An Optuna study's trials are numbered on from the study's, in its own
    folder.)"""
    sweep_dir, subdir = args.get("hydra.sweep.dir"), args.get("hydra.sweep.subdir", "")
    stamped = "${now:" in subdir or "${oc.env:" in subdir  # a folder of each job's own (a SLURM array's task)
    if sweep_dir and multirun and "hparams_search" not in args and not stamped:
        if done := sorted(Path(sweep_dir).rglob("metrics.json")) + sorted(Path(sweep_dir).rglob("checkpoints")):
            raise UserInputError(f"hydra.sweep.dir={sweep_dir} holds an earlier sweep's runs ({done[0].parent}): this "
                                 "sweep's jobs would overwrite them; choose another directory")
        # Jobs that failed before a checkpoint: this sweep's summary would list those it does not rerun as its own
        # failed jobs (its exit status 0 all the same), and the jobs it reruns append to their train.log
        if failed := sorted(p.parent for p in Path(sweep_dir).rglob(".hydra")):
            raise UserInputError(f"hydra.sweep.dir={sweep_dir} holds an earlier sweep's jobs that failed "
                                 f"({failed[0]}): this sweep's summary would list them as its own; delete them or "
                                 "choose another directory")


def run_dir_arguments(args: dict[str, str], argv: list[str], multirun: bool) -> list[str]:
    """`argv`, where hydra.run.dir holds no run or ckpt_path continues the one it holds; without `ckpt_path=last`
    where there is nothing to continue yet."""
    run_dir, ckpt = args.get("hydra.run.dir"), args.get("ckpt_path")
    # Only its own checkpoint continues the run there: another run's would train over it, then test its old best.ckpt
    own = ckpt == "last" or bool(run_dir and ckpt) and (
        Path(ckpt).expanduser().resolve().parent == (Path(run_dir).expanduser() / "checkpoints").resolve())
    other = f" (ckpt_path={ckpt} is not its checkpoint: train from that in a new directory)" if ckpt and not own else ""
    if run_dir and (Path(run_dir) / "metrics.json").exists() and not own:
        raise UserInputError(f"hydra.run.dir={run_dir} already holds a finished run (metrics.json){other}; "
                             "choose another directory, or add ckpt_path=last to continue it")
    if run_dir and (Path(run_dir) / "checkpoints" / "last.ckpt").exists() and not own:
        raise UserInputError(f"hydra.run.dir={run_dir} holds an unfinished run (checkpoints/last.ckpt){other}; "
                             f"continue it with `python train.py resume={run_dir}`, or choose another directory")
    if ckpt == "last" and run_dir and not multirun and not any(
            (Path(run_dir) / name).exists() for name in ("checkpoints/last.ckpt", "metrics.json")):
        # Nothing to continue yet: a fresh run there, as Lightning's own ckpt_path="last" does. So one command both
        # starts a run and continues it when a cluster starts it again (torchrun --max-restarts, SLURM --requeue).
        if not other_rank():
            print(f"warning: ckpt_path=last: no {Path(run_dir) / 'checkpoints' / 'last.ckpt'} yet; a new run starts "
                  "there", file=sys.stderr)
        return [a for a in argv if not a.lstrip("+").startswith("ckpt_path=")]
    return argv


def nothing_to_continue(metrics: dict) -> str:
    """Why `resume=` of a finished run, with nothing added, is refused, and what would continue it."""
    if metrics.get("stopped_early"):  # with the same patience it stops again at once
        return ("that run stopped early (metrics.json): there is nothing to continue; its best weights are in "
                "checkpoints/best.ckpt (to train on, add a larger callbacks.early_stopping.patience=N)")
    if metrics.get("stopped_by") == "max_time":  # a longer budget goes on with the same schedule
        return ("that run used up its trainer.max_time (metrics.json); to train it longer add a larger "
                "trainer.max_time=DD:HH:MM:SS")
    limit = "trainer.max_steps" if metrics.get("stopped_by") == "max_steps" else "trainer.max_epochs"
    return (f"that run finished (metrics.json) and there is nothing to continue; to train it longer add a larger "
            f"{limit}=N and scheduler=none (its schedule's length was fixed when it started)")


def claimed_run_dir(argv: list[str]) -> list[str]:
    """A run directory stamped by the clock (configs/train.yaml: to the second) is claimed before Hydra makes it,
    and the argv names it: two runs started in the same second (a script starting several with `&`) would otherwise
    share one and overwrite each other's config, checkpoints and metrics.json. The later one gets `NAME_1`. A
    directory the command or a preset names (hydra.run.dir=..., an Optuna study's) is left as it is, as are DDP
    ranks, which are given theirs."""
    flags = [a for a in argv if a.startswith("-")]
    if any(flag not in ("-m", "--multirun") for flag in flags):  # --cfg, --help, ...: no run
        return argv
    key = "hydra.sweep.dir" if flags else "hydra.run.dir"
    if any(a.lstrip("+").startswith(f"{key}=") for a in argv):
        return argv
    overrides = [a for a in argv if not a.startswith("-")]
    if flags and (overrides := next(iter(sweep_variants(overrides)), None)) is None:  # a sweep: its first job's
        return argv  # (an override Hydra cannot parse: Hydra says so)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    group, name = key.split(".")[1:]  # sweep, dir
    if "${now:" not in str(OmegaConf.to_container(cfg.hydra, resolve=False)[group][name]):
        return argv
    HydraConfig.instance().set_config(cfg)  # to resolve ${hydra:runtime.choices.model}
    try:
        stamped = Path(OmegaConf.select(cfg, key))
    finally:
        HydraConfig.instance().cfg = None
    try:
        stamped.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, no permission
        raise UserInputError(f"paths.log_dir={cfg.paths.log_dir}: cannot make {stamped.parent} ({err.strerror}); "
                             "choose a folder you can write to, or give hydra.run.dir=DIR") from None
    for n in itertools.count():
        folder = stamped if n == 0 else stamped.with_name(f"{stamped.name}_{n}")
        try:
            folder.mkdir()  # atomic: of two processes, one makes it
        except FileExistsError:
            continue
        return argv + [f"{key}={quoted(str(folder))}"]


def other_rank() -> bool:
    """A DDP process other than rank 0 (started by Lightning, torchrun or srun), which leaves messages to rank 0."""
    return any(int(os.environ.get(name, 0) or 0) > 0 for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


@contextmanager
def config_kept_on_failure(argv: list[str]):
    """Hydra writes a command's config into RUN/.hydra/ before the run starts. If the command then fails before it
    writes a checkpoint (a resume refused because its schedule differs, a bad path), the run directory's earlier
    .hydra/ files are put back: its saved config stays the one its checkpoints were trained with, and
    `resume=RUN` keeps working."""
    run_dir = next((unquoted(a.split("=", 1)[1]) for a in argv if a.lstrip("+").startswith("hydra.run.dir=")), None)
    folder = Path(run_dir) / ".hydra" if run_dir else None
    # Only the process that writes .hydra/ puts it back: DDP's other ranks (started after rank 0 wrote the new
    # config, or told hydra.output_subdir=null) would put back rank 0's new files.
    if folder is None or not folder.is_dir() or other_rank() or "hydra.output_subdir=null" in argv:
        yield
        return
    saved = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    def checkpoints() -> dict:
        return {p: p.stat().st_mtime_ns for p in (Path(run_dir) / "checkpoints").glob("*.ckpt")}

    before = checkpoints()
    try:
        yield
    except BaseException as err:
        if not (isinstance(err, SystemExit) and err.code in (0, None)) and checkpoints() == before:
            for path in folder.iterdir():
                if path.is_file() and path not in saved:
                    path.unlink()
            for path, content in saved.items():
                path.write_bytes(content)
        raise


def distributed_arguments(argv: list[str]) -> list[str]:
    """torchrun and srun start every rank with the same command line. The ranks must share one run directory
    (each would otherwise stamp its own from the clock), and only rank 0 writes .hydra/. (The ranks that Lightning
    itself starts, `trainer=ddp` or `ddp_cpu` from one command, are given rank 0's directory by Lightning.)"""
    for launcher, environment in (("torchrun", TorchElasticEnvironment), ("srun", SLURMEnvironment)):
        if environment.detect() and (env := environment()).world_size() > 1:
            if not any(a.lstrip("+").startswith("hydra.run.dir=") for a in argv):
                raise UserInputError(f"the {env.world_size()} processes that {launcher} started need one run "
                                     "directory: add hydra.run.dir=DIR (e.g. "
                                     f"{'outputs/run1' if launcher == 'torchrun' else 'outputs/$SLURM_JOB_ID'})")
            if (rank := env.global_rank()) > 0:
                return argv + ["hydra.output_subdir=null", f"hydra.job.name=train_ddp_process_{rank}"]
    return argv


log = logging.getLogger("redes")
log.addHandler(logging.NullHandler())  # with Hydra's job logging off: nothing, not Python's stderr fallback


def log_to_run_file() -> None:
    """Hydra points the root logger at RUN/train.log, but Lightning's logger was given its own console handler and
    stopped propagating when it was imported (before Hydra set logging up), so the file stayed empty. Lightning's
    messages and ours (the command, the error line, the test metrics) go to this job's file too, the console
    unchanged. A sweep's next job gets a new file: the previous job's handler is taken off first."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for logger in (logging.getLogger("lightning.pytorch"), logging.getLogger("lightning.fabric"), log):
        for handler in [h for h in logger.handlers if getattr(h, "_redes_run_file", False)]:
            logger.removeHandler(handler)
        if logger.propagate and logger is not log:
            continue  # its records reach the root's file already
        for handler in files:
            handler._redes_run_file = True
            logger.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the console has its own lines (print): only the file gets these
