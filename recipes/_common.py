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

Recipes whose trials (seeds) differ only in their weights run them as one batched program:
:func:`stack_seeds` draws each seed's tensors and stacks them along a leading axis,
:func:`solves_blocks` says whether a method solves the seeds' systems as independent blocks,
and :func:`median_seconds` times a step for the one-trial and the batched profiles.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hypergrad.methods import get_method, method_names

__all__ = [
    "PAPER_METHODS",
    "add_methods_flag",
    "add_output_flags",
    "add_seeds_flag",
    "int_list",
    "label",
    "median",
    "median_seconds",
    "methods_list",
    "plot_only_paths",
    "recipe_parser",
    "seeds_list",
    "solves_blocks",
    "speedup_table",
    "stack_seeds",
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


def stack_seeds(draw: Callable[[torch.Generator], Sequence[torch.Tensor]],
                generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, ...]:
    """Each seed's tensors, ``draw(generators[i])``, stacked along a new leading axis (leaves that
    require grad). Seed ``i`` of the stack starts where its one-seed run starts."""
    if not generators:
        raise ValueError("generators must name at least one seed")
    drawn = [tuple(t.detach() for t in draw(g)) for g in generators]
    return tuple(torch.stack(ts).requires_grad_(True) for ts in zip(*drawn))


def solves_blocks(method: str, stacked: bool) -> bool:
    """``blocks=`` for :func:`hypergrad.gradient`: a stack of seeds solved as independent blocks.

    True for a stacked state and an implicit method that supports blocks
    (:attr:`hypergrad.methods.Method.stackable`); the unrolled methods need no blocks.
    """
    m = get_method(method)
    return stacked and m.family == "implicit" and m.stackable


def median_seconds(fn: Callable[[], object], iterations: int) -> dict[str, float]:
    """Wall and CPU seconds of ``fn()``: the medians of ``iterations`` calls after one warm-up call."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    wall, cpu = [], []
    for _ in range(iterations + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"seconds": median(wall[1:]), "cpu_seconds": median(cpu[1:])}


def median(values: Sequence[float]) -> float:
    """The middle value (the upper of the two middle ones for an even count)."""
    return sorted(values)[len(values) // 2]


def speedup_table(first: str, unit: str, n: int, rows: dict[str, tuple[float, float]], noun: str = "trial") -> str:
    """A Markdown table of ``rows`` (label -> (seconds of one ``noun``, seconds of ``n`` batched)):
    one, ``n`` one after another (``n`` x one), ``n`` batched and the speed-up; ``unit`` names
    what is timed (``"iter"``, ``"epoch"``)."""
    lines = [f"| {first} | 1 {noun} (s/{unit}) | {n} {noun}s one after another (s/{unit}, = {n} x 1 {noun}) "
             f"| {n} {noun}s batched (s/{unit}) | speed-up |", "|---|---|---|---|---|"]
    for name, (one, batch) in rows.items():
        lines.append(f"| {name} | {one:.3f} | {n * one:.2f} | {batch:.2f} | {n * one / batch:.1f}x |")
    return "\n".join(lines)
