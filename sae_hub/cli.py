"""The ``sae-hub`` command line.

Every sub-command prints one line on error (``sae-hub: error: ...``) and exits non-zero; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from sae_hub import SAE, SAEConfig

    torch.manual_seed(0)
    cfg = SAEConfig(architecture="topk", d_in=64, d_sae=512, k=8, apply_b_dec_to_input=True,
                    model_name="demo", hook_name="blocks.0.hook_resid_post")
    sae = SAE(cfg)
    x = torch.randn(256, 64)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sae-hub-demo-"))
    t0 = time.perf_counter()
    sae.save_pretrained(out)
    back = SAE.load_from_disk(out)
    dt = time.perf_counter() - t0
    same = torch.equal(back(x), sae(x))
    print(f"saved and reloaded a {cfg.architecture} SAE in {dt * 1000:.1f} ms at {out}")
    print(describe(back))
    print(f"reconstructions identical after reload: {same}")
    return 0 if same else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sae-hub", description="Load, convert, train and inspect sparse autoencoders.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="save, reload and describe an SAE (offline)",
                       description="Offline demo.\n\nexample:\n  sae-hub demo --out /tmp/demo-sae",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", help="folder to write the SAE to (default: a temp dir)")
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
