"""The recipes' one flag vocabulary and their method names and labels.

Every recipe takes the library's method names (:data:`hypergrad.METHODS`) and shows their
labels, and spells its common flags the same way:

* ``--methods bptt,tbptt,rbp,cg,neumann``: a comma list of method names;
* ``--seeds 0,1,2``: always a list of seeds (``0-9`` is the range 0, 1, ..., 9), never a count;
* ``--inner-steps T``: the steps of the recurrent map (inner training, inference, propagation);
* ``--truncate K``: TBPTT's steps and the implicit solvers' iterations (a list where a recipe
  sweeps K);
* ``--out PATH``: where the results go;
* ``--plot-only [PATH ...]``: re-draw the figures and tables from earlier results (default:
  ``--out``), without running anything;
* ``--quick``: a tiny run for the tests (well under a minute);
* ``--no-progress``: no progress bars.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from hypergrad.methods import get_method, method_names

__all__ = [
    "PAPER_METHODS",
    "add_methods_flag",
    "add_output_flags",
    "add_seeds_flag",
    "int_list",
    "label",
    "methods_list",
    "plot_only_paths",
    "recipe_parser",
    "seeds_list",
]

#: The five methods the paper compares (§5), in its order.
PAPER_METHODS = ("bptt", "tbptt", "rbp", "cg", "neumann")


def recipe_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser that takes flags only as spelled (no prefixes: ``--seed`` is not ``--seeds``)."""
    return argparse.ArgumentParser(prog=prog, description=(doc or "").strip().splitlines()[0] if doc else None,
                                   allow_abbrev=False)


def label(name: str, extra: dict[str, str] | None = None) -> str:
    """The display name of a method: the table's label, or ``extra[name]`` (e.g. a baseline)."""
    if extra and name in extra:
        return extra[name]
    return get_method(name).label


def methods_list(allowed: Sequence[str] | None = None, extra: Sequence[str] = ()) -> Callable[[str], list[str]]:
    """An argparse ``type``: ``"bptt,neumann"`` -> ``["bptt", "neumann"]``, names checked.

    ``allowed``: the method names the recipe takes (default: all of :data:`hypergrad.METHODS`);
    ``extra``: names beyond the table (e.g. ``"baseline"``).
    """
    choices = (*(method_names() if allowed is None else allowed), *extra)

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"unknown method(s) {', '.join(bad) or repr(text)}; choose from {', '.join(choices)}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"a method is listed twice in {text!r}")
        return values

    return parse


def int_list(minimum: int = 1) -> Callable[[str], list[int]]:
    """An argparse ``type``: ``"10,20,30"`` -> ``[10, 20, 30]``, each ``>= minimum``."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values or any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, got {text!r}")
        return values

    return parse


def seeds_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ``"0-4,7"`` -> ``[0, 1, 2, 3, 4, 7]``. A single number is one seed."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if dash else (int(part), int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--seeds takes a comma list of seeds >= 0 and ranges a-b, got {text!r}") from None
        if first < 0 or last < first:
            raise argparse.ArgumentTypeError(f"bad seed or range {part!r} in {text!r} (seeds >= 0, a-b with a <= b)")
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise argparse.ArgumentTypeError(f"--seeds needs at least one seed, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is listed twice in {text!r}")
    return seeds


def add_methods_flag(parser: argparse.ArgumentParser, default: Sequence[str], *,
                     allowed: Sequence[str] | None = None, extra: Sequence[str] = ()) -> None:
    """``--methods``: a comma list of library method names (and the recipe's ``extra`` names)."""
    choices = (*(method_names() if allowed is None else allowed), *extra)
    parser.add_argument("--methods", type=methods_list(allowed, extra), default=list(default),
                        help=f"comma list from {','.join(choices)} (default: {','.join(default)})")


def add_seeds_flag(parser: argparse.ArgumentParser, default: Sequence[int], help: str) -> None:
    """``--seeds``: always a list (``0,1,2`` or ``0-9``)."""
    parser.add_argument("--seeds", type=seeds_list, default=list(default), metavar="LIST",
                        help=f"{help}: a comma list, ranges a-b allowed (default: {_seeds_text(default)})")


def _seeds_text(seeds: Sequence[int]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(str(s) for s in seeds)


def add_output_flags(parser: argparse.ArgumentParser, *, out_default: Path | None, out_help: str,
                     quick_help: str, plot_only_help: str = "figures and tables") -> None:
    """``--out``, ``--plot-only [PATH ...]``, ``--quick`` and ``--no-progress``."""
    parser.add_argument("--out", type=Path, default=out_default, help=out_help)
    parser.add_argument("--plot-only", type=Path, nargs="*", default=None, metavar="PATH",
                        help=f"re-draw the {plot_only_help} from earlier results (default: --out), "
                             "without running anything")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def plot_only_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Path] | None:
    """The results ``--plot-only`` names (``--out`` when it names none); ``None`` without the flag."""
    if args.plot_only is None:
        return None
    if args.plot_only:
        return list(args.plot_only)
    if args.out is None:
        parser.error("--plot-only without paths re-draws from --out; give one of them")
    return [args.out]
