"""``voxelfm datasets``: list the dataset recipes, show one's download layout, prepare a download."""

from __future__ import annotations

import argparse
import sys
import textwrap

HELP = "public CT datasets: list recipes, show the download layout, prepare a download for extract + probes"

EPILOG = """examples:
  voxelfm datasets list
  voxelfm datasets info ct-rate
  voxelfm datasets prepare ct-rate --root downloads/CT-RATE -o prepared/ct-rate
  voxelfm datasets prepare ct-rate --root downloads/CT-RATE -o prepared/ct-rate-first --set reconstructions=first

The prepared folder holds manifest.csv (voxelfm extract -i), labels.csv + splits.csv (probe format),
suite.yaml (voxelfm probe run) and prepare.json (what was found, missing, skipped). See docs/datasets.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="datasets_command", metavar="{list,info,prepare}")
    sub.add_parser("list", help="the datasets with a recipe")
    i = sub.add_parser("info", help="where to get a dataset, its licence, the layout expected, the paper's protocol")
    i.add_argument("name", help="recipe name (voxelfm datasets list)")
    p = sub.add_parser("prepare", help="turn a download into manifest, labels, splits and a suite",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("name", help="recipe name (voxelfm datasets list)")
    p.add_argument("--root", required=True, metavar="DIR", help="the download folder, in the official layout")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="prepared folder to create")
    p.add_argument("--seed", type=int, default=4, help="seed of splits the recipe makes (default 4, the paper's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe option (see voxelfm datasets info NAME)")


def _list() -> int:
    from voxelfm.datasets import recipes

    rows = list(recipes().values())
    width = max(len(r.name) for r in rows)
    for r in rows:
        print(f"{r.name:<{width}}  {r.description}")
    print("\nvoxelfm datasets info NAME: download, licence and layout; voxelfm datasets prepare NAME --root DIR -o DIR")
    return 0


def _info(name: str) -> int:
    from voxelfm.datasets import get_recipe

    r = get_recipe(name)
    wrap = lambda s: textwrap.fill(s, 100, initial_indent="  ", subsequent_indent="  ")  # noqa: E731
    print(f"{r.title} ({r.name}, recipe v{r.version})\n{wrap(r.description)}\n")
    print(f"download: {r.url}\nlicence:  {r.licence}\n")
    print(f"layout expected under --root:\n{textwrap.indent(r.layout, '  ')}\n")
    print(f"paper's protocol:\n{wrap(r.paper)}")
    if r.options:
        print("\noptions (--set KEY=VALUE):")
        for k, o in r.options.items():
            choices = f" ({'|'.join(map(str, o.choices))})" if o.choices else ""
            print(f"  {k}{choices}: {o.help} [default {o.default}]")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from voxelfm.datasets import prepare_dataset

    from voxelfm.cli._options import parse_set_options

    opts = parse_set_options(args.set)
    result = prepare_dataset(args.name, args.root, args.output, seed=args.seed, overwrite=args.overwrite, **opts)
    print(result.summary())
    for w in result.info["warnings"]:
        print(f"voxelfm datasets: warning: {w}", file=sys.stderr)
    for m in result.info["missing"][:10]:
        print(f"  missing: {m}")
    if len(result.info["missing"]) > 10:
        print(f"  ... and {len(result.info['missing']) - 10} more (prepare.json)")
    return 0


def run(args: argparse.Namespace) -> int:
    from voxelfm.errors import ConfigError

    cmd = getattr(args, "datasets_command", None)
    if cmd is None:
        raise ConfigError("choose a subcommand: voxelfm datasets list | info NAME | prepare NAME --root DIR -o DIR")
    if cmd == "list":
        return _list()
    if cmd == "info":
        return _info(args.name)
    return _prepare(args)
