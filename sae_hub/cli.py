"""The ``sae-hub`` command line.

Every sub-command prints one line on error (``sae-hub: error: ...``) and exits non-zero; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["describe", "main"]


def describe(sae: Any) -> str:
    """A short human-readable summary of an SAE: format, architecture, shapes, hooks, provenance."""
    from sae_hub.files import dtype_to_str

    c = sae.cfg
    lines = [
        f"architecture   {c.architecture}" + (f" (k={c.k})" if c.k is not None else "")
        + (" transcoder" if c.is_transcoder else "") + (" +skip" if c.has_skip else ""),
        f"d_in / d_sae   {c.d_in} / {c.d_sae}" + (f" / d_out {c.d_out}" if c.is_transcoder else ""),
        f"dtype, device  {dtype_to_str(sae.dtype)}, {sae.device}",
        f"model, hook    {c.model_name or '?'} @ {c.hook_name or '?'}"
        + (f" -> {c.hook_name_out}" if c.hook_name_out and c.hook_name_out != c.hook_name else ""),
        f"input          centre by b_dec: {c.apply_b_dec_to_input}; normalize: {c.normalize_activations}"
        + (f" (x{c.norm_scaling_factor:g})" if c.norm_scaling_factor is not None else ""),
        "tensors        " + ", ".join(f"{n} {list(p.shape)}" for n, p in sae.named_parameters()),
        f"source         {c.provenance.source_format or '?'}: "
        + ", ".join(f["name"] for f in c.provenance.source_files),
    ]
    if c.provenance.conversions:
        lines.append("conversions    " + "; ".join(c.provenance.conversions))
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from sae_hub import SAE

    sae = SAE.load_from_disk(args.path, format=args.format)
    print(f"{args.path}\n{describe(sae)}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from sae_hub import releases

    names = releases.list_releases(args.pattern, model=args.model)
    if args.saes:
        for name in names:
            for sae_id in releases.list_saes(name):
                print(f"{name}\t{sae_id}")
        return 0
    table = releases._TABLE.get()
    width = max((len(n) for n in names), default=0)
    for name in names:
        rel = table[name]
        print(f"{name:{width}s}  {rel.model:24s} {len(rel.raw_saes) and len(rel.saes):6d} SAEs  {rel.format:20s} "
              f"{rel.location}")
    print(f"{len(names)} release(s)", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from sae_hub import releases
    from sae_hub.hub import get_config

    rel, entry = releases.resolve(args.release, args.sae_id)
    print(f"release        {rel.name} ({rel.source})")
    print(f"location       {rel.location}/{entry.path}" + (f" @ {rel.revision}" if rel.revision else ""))
    print(f"format         {rel.format}")
    for key in ("l0", "variance_explained", "neuronpedia", "norm_scaling_factor", "sha256", "hook", "hook_out"):
        value = getattr(entry, key)
        if value is not None:
            print(f"{key:14s} {value}")
    if args.config:
        cfg = get_config(args.release, args.sae_id)
        import json

        print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def _parse_options(items: list[str]) -> dict[str, Any]:
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


def _cmd_convert(args: argparse.Namespace) -> int:
    from sae_hub.conversion import convert

    written = convert(args.src, args.dst, format=args.format, dtype=args.dtype,
                      fold_decoder_norm=args.fold_decoder_norm, **_parse_options(args.option))
    for path in written:
        print(path)
    return 0


def _boot_model(name: str, device: str | None) -> Any:
    """A TransformerLens model: TransformerBridge (TL 4, compatibility mode) or HookedTransformer (TL 3)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained(name, device=device or "cpu")
    model = TransformerBridge.boot_transformers(name, device=device or "cpu")
    model.enable_compatibility_mode()
    return model


def _read_dataset(spec: str, column: str) -> Any:
    """Texts from a .txt file (one document per line), a .jsonl file (``column``), or a saved/hub ``datasets``
    dataset."""
    from pathlib import Path as _Path

    p = _Path(spec)
    if p.is_file() and p.suffix == ".txt":
        return [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.is_file() and p.suffix in (".jsonl", ".json"):
        import json

        return [json.loads(line)[column] for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    import datasets

    if p.is_dir():
        return datasets.load_from_disk(str(p))
    return datasets.load_dataset(spec, split="train")


def _read_train_config(path: str, overrides: list[str]) -> Any:
    import json
    from pathlib import Path as _Path

    from sae_hub.training import TrainConfig

    text = _Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    data.update(_parse_options(overrides))
    return TrainConfig.from_dict(data)


def _cmd_train(args: argparse.Namespace) -> int:
    from sae_hub.training import train_sae

    cfg = _read_train_config(args.config, args.set)
    if args.cache:
        from sae_hub.training.activations import ActivationCache

        source: Any = ActivationCache(args.cache, args.hook or cfg.hook_name)
    elif args.model and args.dataset:
        from sae_hub.training.activations import ModelActivationSource

        hook = args.hook or cfg.hook_name
        if not hook:
            raise SystemExit("sae-hub: error: give --hook or hook_name in the config")
        model = _boot_model(args.model, args.model_device)
        source = ModelActivationSource(model, _read_dataset(args.dataset, args.column), hook,
                                       context_size=args.context_size)
    else:
        raise SystemExit("sae-hub: error: give --cache DIR, or --model and --dataset")
    if args.out:
        cfg.output_dir = args.out
    sae = train_sae(cfg, source, resume=args.resume or None)
    print(f"trained {sae.cfg.architecture} SAE d_sae={sae.cfg.d_sae}; metrics: {sae.cfg.extra.get('metrics')}")
    if cfg.output_dir:
        print(cfg.output_dir)
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from sae_hub.training.activations import cache_activations

    model = _boot_model(args.model, args.model_device)
    manifest = cache_activations(model, _read_dataset(args.dataset, args.column), args.hook, args.out,
                                 n_tokens=args.n_tokens, context_size=args.context_size, dtype=args.dtype)
    print(f"cached {manifest.get('n_tokens')} tokens for {', '.join(args.hook)} in {args.out}")
    return 0


def _cmd_upload(args: argparse.Namespace) -> int:
    from sae_hub import SAE

    sae = SAE.load_from_disk(args.path, format=args.format)
    sparsity = None
    from pathlib import Path as _Path

    if (_Path(args.path) / "sparsity.safetensors").is_file():
        from sae_hub.files import read_safetensors

        sparsity = read_safetensors(_Path(args.path) / "sparsity.safetensors")[0].get("sparsity")
    url = sae.push_to_hub(args.repo_id, args.path_in_repo, private=args.private or None,
                          commit_message=args.message, sparsity=sparsity)
    print(url)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sae_hub import demo

    if args.release or args.sae_id:
        if not (args.release and args.sae_id):
            raise SystemExit("sae-hub: error: --release and --sae-id go together")
        demo.run_hub_demo(args.release, args.sae_id)
        return 0
    result = demo.run_synthetic_demo(args.out, steps=args.steps, progress=not args.no_progress)
    return 0 if all(result["metrics"][k] >= t for k, t in demo.TARGETS.items()) else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sae-hub", description="Load, convert, train and inspect sparse autoencoders.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="train, save, reload and report on an SAE in about a minute (offline)",
                       description="Offline by default: trains a TopK SAE on planted-feature synthetic data, "
                                   "saves it, registers it as a local release, loads it back with "
                                   "SAE.from_pretrained, prints recovery metrics next to targets and writes an "
                                   "HTML report.\n\nexamples:\n  sae-hub demo --out /tmp/demo\n"
                                   "  sae-hub demo --release gpt2-small-res-jb --sae-id blocks.8.hook_resid_pre",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", help="folder for the SAE and report.html (default: a temp dir)")
    d.add_argument("--steps", type=int, default=1500, help="training steps (batches of 1024 tokens)")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--release", help="real flow: a registry release (needs the Hub)")
    d.add_argument("--sae-id", help="real flow: the SAE id in that release")
    d.set_defaults(func=_cmd_demo)

    ls = sub.add_parser("list", help="list the releases in the registry",
                        description="List releases (fnmatch PATTERN, --model filter).\n\nexamples:\n"
                                    "  sae-hub list 'gemma-scope-2b*'\n  sae-hub list --model gpt2 --saes",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("pattern", nargs="?", help="fnmatch pattern on release names")
    ls.add_argument("--model", help="fnmatch pattern on the model name")
    ls.add_argument("--saes", action="store_true", help="print every (release, sae id) pair")
    ls.set_defaults(func=_cmd_list)

    inf = sub.add_parser("info", help="describe one SAE of a release (registry facts; --config fetches its config)",
                         description="example:\n  sae-hub info gemma-scope-2b-pt-res-canonical "
                                     "layer_12/width_16k/canonical --config",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    inf.add_argument("release")
    inf.add_argument("sae_id")
    inf.add_argument("--config", action="store_true", help="also fetch and print its config (no weights)")
    inf.set_defaults(func=_cmd_info)

    cv = sub.add_parser("convert", help="convert a checkpoint (or a folder of them) to the native format",
                        description="Write SRC in the native (SAELens 6) format under DST, recording the source "
                                    "files' sha256 and every transform in cfg.json.\n\nexamples:\n"
                                    "  sae-hub convert overcomplete/module.pt out/ --dtype float32\n"
                                    "  sae-hub convert state_dict.pt out/ --format overcomplete --option top_k=32",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    cv.add_argument("src")
    cv.add_argument("dst")
    cv.add_argument("--format", help="loader name (default: autodetect)")
    cv.add_argument("--dtype", help="cast the weights (e.g. float32, bfloat16)")
    cv.add_argument("--fold-decoder-norm", action="store_true", help="unit-norm decoder rows (exact fold)")
    cv.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="loader option, value parsed as JSON when possible (repeatable)")
    cv.set_defaults(func=_cmd_convert)

    tr = sub.add_parser("train", help="train an SAE from a YAML/JSON TrainConfig",
                        description="Train on a model + dataset or on an activation cache.\n\nexamples:\n"
                                    "  sae-hub train cfg.yaml --cache acts/ --out my_sae/\n"
                                    "  sae-hub train cfg.yaml --model gpt2 --dataset texts.txt "
                                    "--hook blocks.6.hook_resid_post --set steps=2000",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("config", help="TrainConfig as YAML or JSON (sae_hub.training.TrainConfig fields)")
    tr.add_argument("--cache", help="activation cache folder (from cache-activations)")
    tr.add_argument("--model", help="TransformerLens model name or local HF folder")
    tr.add_argument("--model-device", default=None)
    tr.add_argument("--dataset", help=".txt (one document per line), .jsonl, or a datasets name/folder")
    tr.add_argument("--column", default="text")
    tr.add_argument("--hook", help="hook name (default: hook_name in the config)")
    tr.add_argument("--context-size", type=int, default=128)
    tr.add_argument("--out", help="output folder (native format)")
    tr.add_argument("--resume", help="checkpoint folder to resume from")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    tr.set_defaults(func=_cmd_train)

    ca = sub.add_parser("cache-activations", help="run a model once and cache activations of several hooks",
                        description="example:\n  sae-hub cache-activations --model gpt2 --dataset texts.txt "
                                    "--hook blocks.6.hook_resid_post --hook blocks.8.hook_resid_post "
                                    "--n-tokens 1000000 --out acts/",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ca.add_argument("--model", required=True)
    ca.add_argument("--model-device", default=None)
    ca.add_argument("--dataset", required=True)
    ca.add_argument("--column", default="text")
    ca.add_argument("--hook", action="append", required=True)
    ca.add_argument("--n-tokens", type=int, required=True)
    ca.add_argument("--context-size", type=int, default=128)
    ca.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ca.add_argument("--out", required=True)
    ca.set_defaults(func=_cmd_cache)

    up = sub.add_parser("upload", help="upload a local SAE to the Hub (native format + model card)",
                        description="example:\n  sae-hub upload my_sae/ me/my-sae",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("path")
    up.add_argument("repo_id")
    up.add_argument("--path-in-repo", default=None)
    up.add_argument("--format", default=None)
    up.add_argument("--private", action="store_true")
    up.add_argument("--message", default=None)
    up.set_defaults(func=_cmd_upload)

    i = sub.add_parser("inspect", help="show format, architecture, shapes, dtypes and metadata of a checkpoint",
                       description="Detect a checkpoint's format and describe it without converting.\n\n"
                                   "example:\n  sae-hub inspect ./my_sae_folder",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("path")
    i.add_argument("--format", help="loader name (default: autodetect)")
    i.set_defaults(func=_cmd_inspect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sae-hub`` console script."""
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
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
