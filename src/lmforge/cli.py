"""`lmforge <verb> …`: a thin layer mapping command lines onto typed functions.

Each verb is a plain function in `lmforge.verbs` (its signature is the CLI and the YAML schema, its
docstring the help; a dataclass parameter marked `Flat` gives its fields as top-level flags, see
`lmforge.verbs.flags`). Verbs are imported only when run, so `lmforge --help` imports neither torch
nor jsonargparse.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable

# verb -> (module, function or {subverb: function}, one-line summary); a subverb "" is the verb's
# own function, run when the next word names no subverb (`lmforge evaluate SOURCE` besides
# `lmforge evaluate compare …`)
VERBS: dict[str, tuple[str, str | dict[str, str], str]] = {
    "models": ("lmforge.verbs.models", "models", "List the named model configs with parameter counts"),
    "download": ("lmforge.verbs.download", "download", "Download an HF hub checkpoint and convert it"),
    "convert": ("lmforge.verbs.convert", "convert", "Convert a checkpoint (HF dir, .gguf, lmforge dir) to lmforge/hf/gguf"),
    "tokenizer": ("lmforge.verbs.tokenizer", {"train": "train"}, "Tokenizer tools: `tokenizer train` a byte-level BPE"),
    "assets": ("lmforge.verbs.assets", {"fetch": "fetch", "list": "list_assets"}, "Fetch the registry assets (SmolLM2, tokenizers, data)"),
    "generate": ("lmforge.verbs.generate", "generate", "Generate a completion for one prompt"),
    "chat": ("lmforge.verbs.chat", "chat", "Chat with a model in the terminal"),
    "serve": ("lmforge.verbs.serve", "serve", "Serve a model over an OpenAI-compatible HTTP API"),
    "prepare": ("lmforge.verbs.prepare", "prepare", "Tokenize text files into training shards"),
    "pretrain": ("lmforge.verbs.pretrain", "pretrain", "Pretrain (or continue training) a model"),
    "finetune": ("lmforge.verbs.finetune", {"classify": "classify", "sft": "sft"},
                 "Finetune a model: `finetune classify` (a classifier head) or `finetune sft` (instructions)"),
    "align": ("lmforge.verbs.align", "align", "Preference-tune a model: DPO, IPO, SimPO, ORPO or KTO"),
    "classify": ("lmforge.verbs.classify", "classify", "Classify texts with a `finetune classify` checkpoint"),
    "data": ("lmforge.verbs.data", {"tasks": "tasks", "pairs": "pairs", "instructions": "instructions"},
             "Data tools: checkable `tasks`, preference `pairs`, open `instructions` to judge"),
    "evaluate": ("lmforge.verbs.evaluate", {"": "evaluate", "compare": "compare", "pairwise": "pairwise"},
                 "Evaluate a model (MMLU, perplexity, …); `evaluate compare` puts runs side by side"),
    "demo": ("lmforge.verbs.demo", "demo", "Run the embedded end-to-end demo"),
    "report": ("lmforge.verbs.report", "report", "Render a run folder's report as one self-contained HTML file"),
}

USAGE = "usage: lmforge <verb> [options]   (lmforge <verb> --help for a verb's options)"


def _print_help() -> None:
    from lmforge import __version__

    print(f"lmforge {__version__}: build, pretrain, load, finetune, align, evaluate and serve LLMs\n")
    print(USAGE + "\n\nverbs:")
    width = max(map(len, VERBS))
    for verb, (_, _, summary) in VERBS.items():
        print(f"  {verb:<{width}}  {summary}")


def _resolve(verb: str):
    """The function of `verb` ("evaluate compare", "evaluate " for its own), or {subverb: function}."""
    name, split, sub = verb.partition(" ")
    module_name, target, _ = VERBS[name]
    module = importlib.import_module(module_name)
    if split:
        return getattr(module, target[sub])
    if isinstance(target, dict):
        return {sub: getattr(module, fn) for sub, fn in target.items()}
    return getattr(module, target)


def _split_default(verb: str, rest: list[str]) -> tuple[str, list[str]]:
    """(the verb as the parser sees it, its arguments): `evaluate compare a b` -> ("evaluate compare",
    [a, b]) for a verb whose "" subverb is its own function; other verbs unchanged."""
    target = VERBS[verb.split()[0]][1]
    if isinstance(target, dict) and "" in target:
        if rest and rest[0] in target:
            return f"{verb} {rest[0]}", rest[1:]
        return f"{verb} ", rest
    return verb, rest


def _gather_words(fn: object, rest: list[str]) -> list[str]:
    """`compare a.json b.json --out x` -> `compare '["a.json", "b.json"]' --out x` when the function's
    first parameter is a required `list[str]`: jsonargparse takes one word per positional."""
    if isinstance(fn, dict):
        return rest
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].default is not inspect.Parameter.empty or params[0].annotation not in ("list[str]", list[str]):
        return rest
    n = next((i for i, a in enumerate(rest) if a.startswith("-")), len(rest))
    if n == 0:
        return rest
    import json

    return [json.dumps(rest[:n]), *rest[n:]]


def _normalize_flag(arg: str) -> str:
    """`--max-new-tokens=5` -> `--max_new_tokens=5`: both spellings work, as in most CLIs."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return "--" + name[2:].replace("-", "_") + eq + value


def _bare_bools(fn: Callable | dict, args: list[str]) -> list[str]:
    """`--full` alone (last, or before another flag) -> `--full true`, for the verb's bool options."""
    import inspect

    if isinstance(fn, dict):
        return args
    bools = {f"--{name}" for name, p in inspect.signature(fn).parameters.items() if p.annotation in (bool, "bool")}
    out = []
    for i, a in enumerate(args):
        out.append(a)
        if a in bools and (i + 1 == len(args) or args[i + 1].startswith("--")):
            out.append("true")
    return out


def run(argv: list[str]) -> object:
    """Run one verb with its arguments; bad flags or --config files raise `LmforgeError` (one line)."""
    fn, kwargs = parse(argv)
    return fn(**kwargs)


def parse(argv: list[str]) -> tuple[Callable, dict[str, object]]:
    """The verb function `argv` names and its keyword arguments, from the flags and --config files.

    Bad flags or --config files raise `LmforgeError` (one line naming them).
    """
    from argparse import ArgumentError

    from lmforge.errors import LmforgeError

    key, rest = _split_default(argv[0], [_normalize_flag(a) for a in argv[1:]])
    fn = _resolve(key)
    verb = key.rstrip()
    rest = _bare_bools(fn, _gather_words(fn, rest))
    rest, configs = _config_files(rest)
    # an error in the options may come from a config file: say which files were read
    where = f" (with --config {', '.join(configs)})" if configs else ""
    parser = verb_parser(key)
    try:
        cfg = parser.parse_args(rest)
        _check_groups(parser, cfg)
        init = parser.instantiate(cfg)  # builds the dataclass groups: their checks run here
        if isinstance(fn, dict):  # `lmforge tokenizer train …`: the subverb's own options
            fn, init = fn[init["subcommand"]], init[init["subcommand"]]
        kwargs = _arguments(fn, init)  # builds the Flat groups: their checks run here
    except ArgumentError as e:
        msg = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise LmforgeError(f"lmforge {verb}: {msg}{where} (see 'lmforge {verb} --help')") from None
    except LmforgeError as e:
        raise LmforgeError(f"{e}{where}") from None
    return fn, kwargs


def verb_parser(verb: str) -> object:
    """The jsonargparse parser of `lmforge VERB`: the verb function's signature, with the fields of each
    `Flat` parameter (`lmforge.verbs.flags`) as top-level flags and a `--config FILE.yaml`."""
    from jsonargparse import ActionConfigFile, ArgumentParser, auto_parser, set_parsing_settings

    from lmforge.verbs.flags import flat_params

    # field docstrings (`"""Peak learning rate."""` under a dataclass field) are --help text
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    fn = _resolve(verb)
    prog = f"lmforge {verb}".rstrip()
    if isinstance(fn, dict):  # subverbs
        return auto_parser(fn, as_positional=True, prog=prog, exit_on_error=False)
    flat = flat_params(fn)
    summary = inspect.getdoc(fn).split("\n\n")[0]
    parser = ArgumentParser(prog=prog, description=summary, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="Path to a configuration file.")
    parser.add_function_arguments(fn, as_positional=True, as_group=False, skip=set(flat), sub_configs=True)
    for group in flat.values():
        parser.add_class_arguments(group.cls, as_positional=True, skip=set(group.flat.skip), sub_configs=True)
        if group.default is not None:
            parser.set_defaults({name: getattr(group.default, name) for name in group.flags})
    return parser


def _arguments(fn: object, init: object) -> dict[str, object]:
    """The keyword arguments of `fn` from the parsed, instantiated options (`Flat` groups built)."""
    from lmforge.verbs.flags import flat_params

    flat = flat_params(fn)
    return {name: flat[name].build(init) if name in flat else init[name]
            for name in inspect.signature(fn).parameters}


def _config_files(args: list[str]) -> tuple[list[str], list[str]]:
    """`args` with each `--config NAME` of a packaged config (`austen-tiny`) made its file path, and
    the `--config` files, each checked to be a non-empty YAML mapping.

    jsonargparse would report a binary or malformed file as a UnicodeDecodeError or as a problem
    `in "<unicode string>"`: here the error names the file. (A `--config` value that is neither a
    file nor a packaged name is inline YAML, left to jsonargparse.)
    """
    from lmforge._io import read_yaml
    from lmforge.configs import find_config
    from lmforge.errors import LmforgeError

    args, files = list(args), []
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag != "--config" or (not eq and i + 1 == len(args)):
            continue
        path = find_config(value if eq else args[i + 1])
        if not path.is_file():
            continue
        if not read_yaml(path, LmforgeError):
            raise LmforgeError(f"{path}: no options in this config file (expected key: value lines)")
        if eq:
            args[i] = f"--config={path}"
        else:
            args[i + 1] = str(path)
        files.append(str(path))
    return args, files


def _check_groups(parser: object, cfg: object) -> None:
    """A group of options (`train:`) given a value that is no mapping (`train: 3`) in a config file.

    jsonargparse accepts it and then fails with a TypeError while building the group.
    """
    from jsonargparse import Namespace

    from lmforge.errors import LmforgeError

    for name in parser.groups:  # the dataclass groups of the verb's signature (data, train, …)
        if "." not in name and name in cfg and not isinstance(cfg[name], Namespace):
            raise LmforgeError(f"'{name}' must be a mapping of {name}.* options, got {cfg[name]!r}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return
    if argv[0] in ("-V", "--version"):
        from lmforge import __version__

        print(__version__)
        return
    if argv[0] not in VERBS:
        import difflib

        close = difflib.get_close_matches(argv[0], VERBS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        sys.exit(f"error: unknown verb {argv[0]!r}{hint}. {USAGE}")
    # OpenMP threads that sleep instead of spinning while they wait: on a shared or busy machine
    # spinning threads made prefill ~10x and decoding ~3x slower (benchmarks/README.md)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from lmforge.errors import LmforgeError

    try:
        run(argv)
    except LmforgeError as e:
        sys.exit(f"error: {e}")
    except FileNotFoundError as e:
        sys.exit(f"error: {e.filename or e}: file not found")
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `lmforge models | head`: the reader left; exit quietly
        sys.stderr.close()
        os._exit(0)
    except Exception as e:  # a bug of ours: keep the traceback when asked
        if os.environ.get("LMFORGE_DEBUG"):
            raise
        sys.exit(f"error: {type(e).__name__}: {e} (set LMFORGE_DEBUG=1 for the traceback)")
