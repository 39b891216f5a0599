"""The ``sae-hub`` command line (also ``python -m sae_hub``).

Each sub-command is declared once, right above its handler: ``@command(name, help=..., examples=...)`` takes the
function that adds its arguments and registers the handler below it. Handlers parse arguments, call the library
and print; the work itself lives in library functions (:mod:`sae_hub.describe`, :mod:`sae_hub.models`,
:func:`sae_hub.convert`, ...), so notebooks can do everything the CLI does.

Every sub-command prints one line on error (``sae-hub: error: ...``) and exits non-zero; ``--debug`` shows the
traceback instead.

The CLI is the only module that writes to stdout. Library diagnostics go to the ``sae_hub`` logger; the CLI shows
its warnings on stderr, and its INFO (``-v``) or DEBUG (``-vv``) records too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]
ArgsFn = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class _Command:
    name: str
    help: str
    description: str
    add_arguments: ArgsFn
    handler: Handler


_COMMANDS: list[_Command] = []


def command(name: str, add_arguments: ArgsFn, *, help: str, description: str = "",
            examples: Sequence[str] = ()) -> Callable[[Handler], Handler]:
    """Register ``handler`` as sub-command ``name``; ``add_arguments(parser)`` declares its arguments."""
    text = description
    if examples:
        text += ("\n\n" if text else "") + ("examples:\n" if len(examples) > 1 else "example:\n")
        text += "\n".join(f"  {e}" for e in examples)

    def register(handler: Handler) -> Handler:
        _COMMANDS.append(_Command(name, help, text, add_arguments, handler))
        return handler

    return register


def _parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values parsed as JSON when they are JSON (numbers, booleans, lists), else strings."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"sae-hub: error: --option expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- demo


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="folder for the SAE and report.html (default: a temp dir)")
    p.add_argument("--steps", type=int, default=1500, help="training steps (batches of 1024 tokens)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--release", help="real flow: a release of the release table (needs the Hub)")
    p.add_argument("--sae-id", help="real flow: the SAE id in that release")


@command("demo", _demo_args, help="train, save, reload and report on an SAE in about a minute (offline)",
         description="Offline by default: trains a TopK SAE on planted-feature synthetic data, saves it, registers "
                     "it as a local release, loads it back with SAE.from_pretrained, prints recovery metrics next "
                     "to targets and writes an HTML report.",
         examples=["sae-hub demo --out /tmp/demo",
                   "sae-hub demo --release gpt2-small-res-jb --sae-id blocks.8.hook_resid_pre"])
def _demo(args: argparse.Namespace) -> int:
    from sae_hub import demo

    if args.release or args.sae_id:
        if not (args.release and args.sae_id):
            raise SystemExit("sae-hub: error: --release and --sae-id go together")
        demo.run_hub_demo(args.release, args.sae_id, echo=print)
        return 0
    result = demo.run_synthetic_demo(args.out, steps=args.steps, progress=not args.no_progress, echo=print)
    return 0 if all(result["metrics"][k] >= t for k, t in demo.TARGETS.items()) else 1


# ---------------------------------------------------------------------------------------------- list / info


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", help="fnmatch pattern on release names")
    p.add_argument("--model", help="fnmatch pattern on the model name")
    p.add_argument("--saes", action="store_true", help="print every (release, sae id) pair")


@command("list", _list_args, help="list the releases in the release table",
         description="List releases (fnmatch PATTERN, --model filter).",
         examples=["sae-hub list 'gemma-scope-2b*'", "sae-hub list --model gpt2 --saes"])
def _list(args: argparse.Namespace) -> int:
    from sae_hub import releases

    names = releases.list_releases(args.pattern, model=args.model)
    if args.saes:
        for name in names:
            for sae_id in releases.list_saes(name):
                print(f"{name}\t{sae_id}")
        return 0
    table = releases.release_table()
    width = max((len(n) for n in names), default=0)
    for name in names:
        rel = table[name]
        print(f"{name:{width}s}  {rel.model:24s} {len(rel.raw_saes) and len(rel.saes):6d} SAEs  {rel.kind:14s} "
              f"{rel.format:20s} {rel.location}")
    print(f"{len(names)} release(s)", file=sys.stderr)
    return 0


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("release")
    p.add_argument("sae_id")
    p.add_argument("--config", action="store_true", help="also fetch and print its config (no weights)")


@command("info", _info_args, help="describe one SAE of a release (release-table facts; --config fetches its config)",
         examples=["sae-hub info gemma-scope-2b-pt-res-canonical layer_12/width_16k/canonical --config"])
def _info(args: argparse.Namespace) -> int:
    from sae_hub import SAE, releases

    rel, entry = releases.resolve(args.release, args.sae_id)
    print(f"release        {rel.name} ({rel.source})")
    print(f"location       {rel.location}/{entry.path}" + (f" @ {rel.revision}" if rel.revision else ""))
    print(f"format         {rel.format}")
    for key in ("l0", "variance_explained", "neuronpedia", "norm_scaling_factor", "sha256", "hook", "hook_out"):
        value = getattr(entry, key)
        if value is not None:
            print(f"{key:14s} {value}")
    if args.config:
        import json

        print(json.dumps(SAE.get_config(args.release, args.sae_id).to_dict(), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------- formats / inspect


def _formats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--files", action="store_true", help="also list the file patterns each loader reads")


@command("formats", _formats_args, help="list the checkpoint formats sae-hub can load (the loader registry)",
         examples=["sae-hub formats", "sae-hub formats --files"])
def _formats(args: argparse.Namespace) -> int:
    from sae_hub.loading import get_loader, list_loaders

    names = list_loaders()
    width = max((len(n) for n in names), default=0)
    for name in names:
        loader = get_loader(name)
        print(f"{name:{width}s}  {loader.description}")
        if args.files:
            print(f"{'':{width}s}  files: {', '.join(loader.files)}"
                  + (f"; options: {', '.join(loader.options)}" if loader.options else ""))
    return 0


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument("--format", help="loader name (default: autodetect)")


@command("inspect", _inspect_args, help="show format, architecture, shapes, dtypes and metadata of a checkpoint",
         description="Detect a checkpoint's format and describe it without converting.",
         examples=["sae-hub inspect ./my_sae_folder"])
def _inspect(args: argparse.Namespace) -> int:
    from sae_hub import SAE
    from sae_hub.describe import describe

    sae = SAE.load_from_disk(args.path, format=args.format)
    print(f"{args.path}\n{describe(sae)}")
    return 0


# ---------------------------------------------------------------------------------------------- convert


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--format", help="loader name (default: autodetect)")
    p.add_argument("--dtype", help="cast the weights (e.g. float32, bfloat16)")
    p.add_argument("--fold-decoder-norm", action="store_true", help="unit-norm decoder rows (exact fold)")
    p.add_argument("--saelens-compatible", action=argparse.BooleanOptionalAction, default=True,
                   help="write folders SAELens 6 computes the same from: fold a constant scaling factor, refuse "
                        "what SAELens cannot compute (default). --no-saelens-compatible writes exactly what "
                        "was loaded, marked sae-hub-only where SAELens would get it wrong")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="loader option, value parsed as JSON when possible (repeatable); with --to circuit-tracer "
                        "also feature_input_hook, feature_output_hook (relative to a block, e.g. mlp.hook_in) and "
                        "scan for its config.yaml")
    p.add_argument("--to", choices=["native", "circuit-tracer"], default="native",
                   help="native: SAELens 6 folders (default). circuit-tracer: ONE folder circuit-tracer 0.5.0 loads "
                        "(layer_{i}.safetensors or W_enc_{i}/W_dec_{i}.safetensors + config.yaml) from a transcoder "
                        "set, a CLT, a folder of per-layer transcoders or one transcoder")


@command("convert", _convert_args, help="convert a checkpoint (or a folder of them) to the native format",
         description="Write SRC in the native (SAELens 6) format under DST, recording the source files' sha256 "
                     "and every transform in cfg.json.",
         examples=["sae-hub convert overcomplete/module.pt out/ --dtype float32",
                   "sae-hub convert state_dict.pt out/ --format overcomplete --option top_k=32",
                   "sae-hub convert my_transcoders/ ct_out/ --to circuit-tracer"])
def _convert(args: argparse.Namespace) -> int:
    from sae_hub.conversion import convert

    written = convert(args.src, args.dst, format=args.format, dtype=args.dtype,
                      fold_decoder_norm=args.fold_decoder_norm, saelens_compatible=args.saelens_compatible,
                      to=args.to, **_parse_options(args.option))
    for path in written:
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------- train / cache


def _read_dataset(spec: str, column: str) -> Any:
    """Texts from a .txt file (one document per line), a .jsonl file (``column``), or a saved/hub ``datasets``
    dataset."""
    from pathlib import Path

    p = Path(spec)
    if p.is_file() and p.suffix == ".txt":
        return [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.is_file() and p.suffix in (".jsonl", ".json"):
        import json

        return [json.loads(line)[column] for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    from sae_hub.extras import require

    datasets = require("datasets", extra="lens", purpose=f"reading dataset {spec!r}")
    if p.is_dir():
        return datasets.load_from_disk(str(p))
    return datasets.load_dataset(spec, split="train")


def _read_train_config(path: str, overrides: list[str]) -> Any:
    import json
    from pathlib import Path

    from sae_hub.training import TrainConfig

    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    data.update(_parse_options(overrides))
    return TrainConfig.from_dict(data)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="TrainConfig as YAML or JSON (sae_hub.training.TrainConfig fields)")
    p.add_argument("--cache", help="activation cache folder (from cache-activations)")
    p.add_argument("--model", help="TransformerLens model name or local HF folder")
    p.add_argument("--model-device", default=None)
    p.add_argument("--dataset", help=".txt (one document per line), .jsonl, or a datasets name/folder")
    p.add_argument("--column", default="text")
    p.add_argument("--hook", help="hook name (default: hook_name in the config)")
    p.add_argument("--hook-out", help="output hook: train a transcoder from --hook to this hook (default: "
                   "hook_name_out in the config; set skip_connection: true for a skip transcoder)")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--out", help="output folder (native format)")
    p.add_argument("--resume", help="checkpoint folder to resume from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")


@command("train", _train_args, help="train an SAE from a YAML/JSON TrainConfig",
         description="Train on a model + dataset or on an activation cache.",
         examples=["sae-hub train cfg.yaml --cache acts/ --out my_sae/",
                   "sae-hub train cfg.yaml --model gpt2 --dataset texts.txt --hook blocks.6.hook_resid_post "
                   "--set steps=2000",
                   "sae-hub train cfg.yaml --model gpt2 --dataset texts.txt --hook blocks.6.ln2.hook_normalized "
                   "--hook-out blocks.6.hook_mlp_out --set skip_connection=true"])
def _train(args: argparse.Namespace) -> int:
    from sae_hub.training import train_sae

    cfg = _read_train_config(args.config, args.set)
    hook_out = args.hook_out or cfg.hook_name_out  # a transcoder reads --hook and predicts --hook-out
    if args.cache:
        from sae_hub.training.activations import ActivationCache

        source: Any = ActivationCache(args.cache, args.hook or cfg.hook_name, hook_name_out=hook_out)
    elif args.model and args.dataset:
        from sae_hub.models import load_model
        from sae_hub.training.activations import ModelActivationSource

        hook = args.hook or cfg.hook_name
        if not hook:
            raise SystemExit("sae-hub: error: give --hook or hook_name in the config")
        model = load_model(args.model, args.model_device)
        source = ModelActivationSource(model, _read_dataset(args.dataset, args.column), hook,
                                       context_size=args.context_size, dataset_path=args.dataset,
                                       hook_name_out=hook_out)
    else:
        raise SystemExit("sae-hub: error: give --cache DIR, or --model and --dataset")
    if args.out:
        cfg.output_dir = args.out
    sae = train_sae(cfg, source, resume=args.resume or None)
    print(f"trained {sae.cfg.architecture} SAE d_sae={sae.cfg.d_sae}; metrics: {sae.cfg.extra.get('metrics')}")
    if cfg.output_dir:
        print(cfg.output_dir)
    return 0


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--model-device", default=None)
    p.add_argument("--dataset", required=True)
    p.add_argument("--column", default="text")
    p.add_argument("--hook", action="append", required=True)
    p.add_argument("--n-tokens", type=int, required=True)
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--out", required=True)


@command("cache-activations", _cache_args, help="run a model once and cache activations of several hooks",
         examples=["sae-hub cache-activations --model gpt2 --dataset texts.txt --hook blocks.6.hook_resid_post "
                   "--hook blocks.8.hook_resid_post --n-tokens 1000000 --out acts/"])
def _cache(args: argparse.Namespace) -> int:
    from sae_hub.models import load_model
    from sae_hub.training.activations import cache_activations

    model = load_model(args.model, args.model_device)
    manifest = cache_activations(model, _read_dataset(args.dataset, args.column), args.hook, args.out,
                                 n_tokens=args.n_tokens, context_size=args.context_size, dtype=args.dtype,
                                 dataset_path=args.dataset)
    print(f"cached {manifest.get('n_tokens')} tokens for {', '.join(args.hook)} in {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- upload


def _upload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument("repo_id")
    p.add_argument("--path-in-repo", default=None)
    p.add_argument("--format", default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--message", default=None)


@command("upload", _upload_args, help="upload a local SAE to the Hub (native format + model card)",
         examples=["sae-hub upload my_sae/ me/my-sae"])
def _upload(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sae_hub import SAE

    sae = SAE.load_from_disk(args.path, format=args.format)
    sparsity = None
    if (Path(args.path) / "sparsity.safetensors").is_file():
        from sae_hub.files import read_safetensors

        sparsity = read_safetensors(Path(args.path) / "sparsity.safetensors")[0].get("sparsity")
    url = sae.push_to_hub(args.repo_id, args.path_in_repo, private=args.private or None,
                          commit_message=args.message, sparsity=sparsity)
    print(url)
    return 0


# ---------------------------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sae-hub", description="Load, convert, train and inspect sparse autoencoders.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="show the library's log on stderr: -v info, -vv debug (default: warnings only)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in _COMMANDS:
        sp = sub.add_parser(c.name, help=c.help, description=c.description or None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_arguments(sp)
        sp.set_defaults(func=c.handler)
    return p


class _CliLogHandler(logging.StreamHandler):
    """Writes the ``sae_hub`` log to whatever ``sys.stderr`` is at the time (tests swap it between calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("sae-hub: %(levelname)s: %(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property ignores it
        pass


def _setup_logging(verbose: int) -> None:
    """Route the ``sae_hub`` logger to stderr for this command (replacing a handler an earlier ``main`` added)."""
    log = logging.getLogger("sae_hub")
    for h in [h for h in log.handlers if isinstance(h, _CliLogHandler)]:
        log.removeHandler(h)
    log.addHandler(_CliLogHandler())
    log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING)
    log.propagate = False  # the CLI is the application: no second copy through a root handler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sae-hub`` console script."""
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    func: Handler = args.func
    if args.debug:
        return func(args)
    try:
        return func(args)
    except KeyboardInterrupt:
        print("sae-hub: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from sae_hub.errors import SaeHubError

        kind = "error" if isinstance(e, SaeHubError) else f"error ({type(e).__name__})"
        print(f"sae-hub: {kind}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
