"""Engine commands: `cnncli gradcheck` and `cnncli bench` (numba is loaded only here)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Optional

import typer

from cnncli.cli import InputOpt, SpecArg, err, fail, input_override, open_spec, out
from cnncli.spec import SpecInvalid, Volume
from cnncli.stats import analyze


def smallest_valid_input(spec, start: int = 16):  # type: ignore[no-untyped-def]
    """The smallest square input (same depth) at which every layer is whole: gradient
    checks run in float64, and small volumes keep them to seconds."""
    for size in range(start, max(start, spec.input.w) + 1):
        volume = Volume(size, size, spec.input.d)
        if analyze(spec, volume).valid:
            return volume
    return spec.input


def register(app: typer.Typer) -> None:
    @app.command()
    def gradcheck(
        spec: SpecArg,
        input: InputOpt = None,
        batch: Annotated[int, typer.Option(help="Images per check.", min=1)] = 2,
        samples: Annotated[int, typer.Option(help="Entries sampled per tensor.", min=1)] = 8,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Finite-difference gradient check in float64, every layer and the whole net.

        Centred differences at sampled entries; fails (exit 1) if any relative error exceeds
        1e-6 or an analytic gradient is identically zero where the numeric one is not."""
        import numpy as np

        from cnncli.gradcheck import THRESHOLD, check_network
        from cnncli.network import Network

        net_spec = open_spec(spec)
        volume = input_override(input) or smallest_valid_input(net_spec)
        try:
            net = Network(net_spec, volume, dtype=np.float64, seed=seed)
        except SpecInvalid as exc:
            fail(f"{spec} is not valid at {volume}: {exc.problems[0].message}", 1)
        started = time.perf_counter()
        checks = check_network(net, batch=batch, samples=samples, seed=seed)
        elapsed = time.perf_counter() - started
        failed = [c for c in checks if not c.passed]
        if as_json:
            print(json.dumps({"input": str(volume), "threshold": THRESHOLD,
                              "passed": not failed, "checks": [c.as_dict() for c in checks]},
                             indent=2))
        else:
            from rich.table import Table
            table = Table(title=f"gradient check of {net_spec.name} at {volume}, float64, "
                          f"centred differences, {samples} samples per tensor",
                          title_justify="left", header_style="bold", box=None)
            for title in ("layer", "gradient of", "shape", "samples", "kinks", "max rel. error",
                          ""):
                table.add_column(title, justify="left" if title in ("layer", "gradient of", "")
                                 else "right")
            for c in checks:
                mark = "[green]ok[/]" if c.passed else "[bold red]FAIL[/]"
                if c.analytic_all_zero and not c.numeric_all_zero:
                    mark = "[bold red]FAIL (analytic gradient is all zero)[/]"
                table.add_row(c.layer, c.what, "x".join(map(str, c.shape)), str(c.samples),
                              str(c.kinks) if c.kinks else "", f"{c.max_rel_error:.2e}", mark)
            out.print(table)
            worst = max(checks, key=lambda c: c.max_rel_error)
            kinks = sum(c.kinks for c in checks)
            out.print(f"{len(checks)} checks in {elapsed:.1f} s; worst {worst.max_rel_error:.2e} "
                      f"({worst.layer} {worst.what}); threshold {THRESHOLD:g}"
                      + (f"; {kinks} sampled entries skipped: their +-h steps flipped a ReLU "
                         "or max-pool winner (a kink), where differences measure the jump"
                         if kinks else ""))
        if failed:
            err.print(f"[bold red]{len(failed)} gradient check(s) failed[/]")
            raise typer.Exit(1)

    @app.command()
    def warmup() -> None:
        """Compile the engine's kernels once and cache them on disk (run by `make install`)."""
        from cnncli.warmup import warm_up

        seconds = warm_up()
        out.print(f"engine kernels compiled and cached in {seconds:.1f} s")

    @app.command()
    def bench(
        spec: SpecArg,
        input: InputOpt = None,
        batch: Annotated[int, typer.Option(help="Batch size.", min=1)] = 64,
        iterations: Annotated[int, typer.Option(help="Timed passes (after one warm-up).",
                                                min=1)] = 5,
        threads: Annotated[Optional[int], typer.Option(help="Threads (default: all cores).")]
        = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Per-layer forward and backward time and GFLOP/s, like `caffe time`.

        Find the slow layer of any spec (plain chains of layers)."""
        from cnncli.profile import profile_layers

        net_spec = open_spec(spec)
        volume = input_override(input)
        try:
            result = profile_layers(net_spec, volume, batch, iterations, threads)
        except SpecInvalid as exc:
            fail(f"{spec} is not valid: {exc.problems[0].message}", 1)
        if as_json:
            print(json.dumps(result, indent=2))
            return
        from rich.table import Table
        table = Table(title=f"{net_spec.name}: batch {batch}, float32, {result['threads']} "
                      f"threads, median of {iterations}", title_justify="left",
                      header_style="bold", box=None)
        for title in ("layer", "type", "output", "forward ms", "backward ms", "GFLOP/s fwd",
                      "GFLOP/s fwd+bwd", "share"):
            table.add_column(title, justify="left" if title in ("layer", "type") else "right")
        total = result["total_ms"]
        for r in result["layers"]:
            both = r["forward_ms"] + r["backward_ms"]
            table.add_row(r["name"], r["kind"], r["output"], f"{r['forward_ms']:.2f}",
                          f"{r['backward_ms']:.2f}",
                          f"{r['gflops_forward']:.1f}" if r["gflops_forward"] else "",
                          f"{r['gflops_total']:.1f}" if r["gflops_total"] else "",
                          f"{both / total:.0%}" if total else "")
        out.print(table)
        out.print(f"whole step (forward + backward): {total:.1f} ms = "
                  f"{batch / (total / 1000):,.0f} images/s")
