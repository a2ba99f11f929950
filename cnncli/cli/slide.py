"""`cnncli convert` (FC layers -> convolutions, spec and weights) and `cnncli slide`
(score every window of a larger image in one pass). numba loads only inside `slide`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from cnncli.cli.options import (
    RoundingOpt,
    SeedOpt,
    SpecArg,
    TableOrJson,
    TableOrJsonOpt,
    ThreadsOpt,
    open_spec,
    rounding_mode,
)
from cnncli.cli.output import err, out, print_json, warn, write
from cnncli.errors import InputError, RunInvalid
from cnncli.files import write_atomically, write_text
from cnncli.render.sliding import print_slide_result
from cnncli.spec.parse import Spec

if TYPE_CHECKING:
    pass

def _header(spec: Spec, rounding: str | None) -> str:
    from cnncli.sliding.convert import fc_layers, global_pools

    lines = [f"# {spec.name} with its FC layers rewritten as convolutions "
             "(cnncli convert --fc-to-conv).", f"# from {spec.source}"]
    for fc in fc_layers(spec, rounding):
        lines.append(f"#   {fc['name']}: FC over {fc['input']} -> conv F={fc['filter']}, P=0, S=1, "
                     f"{fc['units']} filters; weight {fc['weight_from']} -> {fc['weight_to']}")
    for pool in global_pools(spec, rounding):
        lines.append(f"#   {pool['name']}: global {pool['type']} pool over {pool['input']} -> a "
                     "pool of that size, stride 1")
    lines += ["# FC weights reshape to OIHW without a transpose: cnncli (like PyTorch) flattens an",
              "# FC layer's input in (depth, height, width) order.",
              "# input: is the training size (one window); check or slide it at a larger size."]
    return "\n".join(lines) + "\n"


def _class_names(spec: Spec, weights: Any, k: int) -> list[str]:
    given = (weights.meta.get("classes") if weights is not None else None) \
        or spec.raw.get("classes") or []
    names = [str(n) for n in given] if isinstance(given, list) else []
    return (names + [str(i) for i in range(len(names), k)])[:k]


def convert(
    spec: SpecArg,
    fc_to_conv: Annotated[bool, typer.Option(
        "--fc-to-conv", help="Rewrite FC layers as convolutions (the first one as a conv "
                             "over its whole input volume, later ones as 1x1 convs).")]
    = False,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Where to write: the converted weights (.npz) with "
                               "--weights, else the converted spec (YAML). Default: the "
                               "spec to standard output.", show_default=False)] = None,
    weights: Annotated[Optional[Path], typer.Option(
        "--weights", help="A checkpoint or weights .npz of the original net; its FC "
                          "weights are reshaped for the converted net (needs -o OUT.npz).",
        show_default=False)] = None,
    spec_out: Annotated[Optional[Path], typer.Option(
        "--spec-out", help="With --weights: also write the converted spec here "
                           "(default: standard output).", show_default=False)] = None,
    rounding: RoundingOpt = None,
) -> None:
    """Rewrite a net's FC layers as convolutions, so it slides over larger images."""
    if not fc_to_conv:
        raise InputError("nothing to convert: pass --fc-to-conv (rewrite FC layers as "
                         "convolutions)")
    if weights is not None and (output is None or output.suffix.lower() != ".npz"):
        raise InputError("--weights needs -o OUT.npz, the file for the converted weights")
    mode = rounding_mode(rounding)
    net = open_spec(spec)
    from cnncli.sliding.convert import fc_to_conv_spec, spec_yaml

    text = _header(net, mode) + spec_yaml(fc_to_conv_spec(net, mode))
    if weights is not None:
        assert output is not None
        from cnncli.sliding.convert import ConvertError, convert_weights, fc_layers
        from cnncli.sliding.slide import load_weights, save_npz

        loaded = load_weights(weights)
        try:
            state = convert_weights(net, loaded.state, mode)
        except ConvertError as exc:  # the message names the layer; add the file
            raise RunInvalid(f"{weights}: {exc}") from None
        save_npz(output, state)
        for fc in fc_layers(net, mode):
            err.print(f"{fc['name']}.weight {fc['weight_from']} -> {fc['weight_to']}")
        err.print(escape(f"wrote {len(state)} arrays to {output} (PyTorch names and layouts)"))
        if loaded.mean is not None and loaded.std is not None:
            err.print(f"note: the checkpoint normalises inputs per channel (mean "
                      f"{[round(float(v), 4) for v in loaded.mean]}, std "
                      f"{[round(float(v), 4) for v in loaded.std]}); `cnncli slide` "
                      "with the checkpoint itself applies it")
        if spec_out is not None:
            write_text(spec_out, text)
            err.print(escape(f"wrote the converted spec to {spec_out}"))
        else:
            write(text)
        return
    if output is not None:
        write_text(output, text)
        err.print(escape(f"wrote the converted spec to {output}"))
    else:
        write(text)


def slide(
    spec: SpecArg,
    images: Annotated[list[Path], typer.Argument(
        metavar="IMAGE", help="Images: .npy/.npz arrays HxWxC (uint8 0-255 or float), or "
                              "image files with Pillow installed.", show_default=False)],
    weights: Annotated[Optional[Path], typer.Option(
        "--weights", help="A checkpoint from `cnncli train` or a weights .npz "
                          "(NAME -> array).", show_default=False)] = None,
    random_weights: Annotated[bool, typer.Option(
        "--random-weights", help="Use the engine's random initialisation (for --verify "
                                 "and timing only: the scores mean nothing).")] = False,
    seed: SeedOpt = 0,
    stride: Annotated[Optional[int], typer.Option(
        "--stride", min=1, help="Window stride in px, a divisor of the net's own (the "
                                "product of its strides); finer strides take one pass "
                                "per shift.", show_default=False)] = None,
    average: Annotated[bool, typer.Option(
        "--average", help="Also classify each image by averaging all windows' scores.")]
    = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Also run the original net on every window crop and report the "
                         "largest difference from the one-pass map.")] = False,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", help="Write the full score maps: .npy (one image), .npz (one array per "
                      "image) or .json.", show_default=False)] = None,
    fmt: TableOrJsonOpt = TableOrJson.table,
    threads: ThreadsOpt = None,
    rounding: RoundingOpt = None,
) -> None:
    """Score every window of each image in one pass: the top class per window as a grid.

    The net's FC layers are rewritten as convolutions, so one forward pass over a larger
    image gives a map of class scores, one per window of the training size.
    """
    if weights is None and not random_weights:
        raise InputError("slide needs the trained net's weights: pass --weights CKPT (a "
                         "checkpoint or a weights .npz); --random-weights runs untrained "
                         "weights (only for --verify and timing)")
    if weights is not None and random_weights:
        raise InputError("--weights and --random-weights exclude each other")
    if out_path is not None and out_path.suffix.lower() not in (".npy", ".npz", ".json"):
        raise InputError(f"--out must end in .npy, .npz or .json, got {out_path.name!r}")
    if out_path is not None and out_path.suffix.lower() == ".npy" and len(images) > 1:
        raise InputError("--out .npy holds one score map; with several images use .npz or "
                         ".json")
    mode = rounding_mode(rounding)
    net = open_spec(spec)
    from cnncli.config import configure_threads
    from cnncli.sliding.convert import ConvertError, fc_to_conv_spec
    from cnncli.sliding.slide import SlideError, SlidingNet, load_image, load_weights
    from cnncli.sliding.slide import average as average_scores

    fc_to_conv_spec(net, mode)  # a net that cannot convert stops here, before any work
    loaded = load_weights(weights) if weights is not None else None
    configure_threads(threads)
    try:
        sn = SlidingNet.build(net, loaded.state if loaded else None, seed=seed,
                              rounding=mode)
    except (ConvertError, ValueError) as exc:  # names the layer; add the file and the net
        raise RunInvalid(f"{weights}: the weights do not fit {net.name}: {exc}") from None
    if loaded is not None and loaded.meta.get("spec_sha256"):
        from cnncli.engine.checkpoint import spec_sha256
        from cnncli.training.loop import spec_text_of

        if loaded.meta["spec_sha256"] != spec_sha256(spec_text_of(net)):
            warn(f"{weights} was trained on '{loaded.meta.get('spec_name', '?')}', a spec "
                 "text other than this one; its weights fit by name and shape")
    if not sn.exact and fmt is TableOrJson.table:
        pads = [b for b in sn.breaks if b.reason == "padding"]
        if pads:
            shown = ", ".join(b.layer for b in pads[:4]) + (", ..." if len(pads) > 4 else "")
            warn(f"{net.name} zero-pads inside ({len(pads)} layer"
                 f"{'s' if len(pads) > 1 else ''}: {shown}): each one-pass score also sees "
                 "pixels around its window, where the lone crop saw zeros, so it is not the "
                 "crop's score (--verify measures the difference)")
    from cnncli.cli.engine import compile_first

    # the sliding nets run the engine's default policy (GEMM), evaluation only
    compile_first(sn.converted, "float32", "gemm", training=False,
                  also=(net,) if verify else ())
    results: list[dict[str, Any]] = []
    maps: dict[str, Any] = {}
    failed_verify = False
    for path in images:
        try:
            image = sn.prepare(load_image(path), loaded, str(path), warn)
            geo = sn.check_image(image, stride)
            sn.warm(image.shape, stride)  # build the nets first: time the passes only
            started = time.perf_counter()
            scores = sn.score_map(image, stride)
            seconds = time.perf_counter() - started
        except SlideError as exc:  # with several images, say which one
            if str(exc).startswith(str(path)):
                raise
            raise SlideError(f"{path}: {exc}", exc.code) from None
        k = scores.shape[-1]
        names = _class_names(net, loaded, k)
        top = scores.argmax(-1)
        result: dict[str, Any] = {
            "image": str(path), "size": {"width": image.shape[1], "height": image.shape[0]},
            "score_map": list(scores.shape), "window": geo["window"],
            "window_stride": geo["window_stride"], "passes": geo["passes"],
            "seconds": seconds, "exact": sn.exact,
            "top_class": top.tolist(), "top_score": scores.max(-1).round(6).tolist(),
            "classes": names,
        }
        if average:
            result["average"] = [{"class": c, "name": names[c], "score": s}
                                 for c, s in average_scores(scores)]
        if verify:
            result["verify"] = sn.verify(image, scores, stride)
            result["verify"]["one_pass_seconds"] = seconds
            if result["verify"]["passed"] is False:
                failed_verify = True
        results.append(result)
        maps[path.stem if path.stem not in maps else str(path)] = scores
        if fmt is TableOrJson.table:
            print_slide_result(out, result, scores, names, geo)
    if out_path is not None:
        _write_maps(out_path, maps, results)
    if fmt is TableOrJson.json:
        print_json({"spec": net.name, "exact": sn.exact,
                    "breaks": [b.as_dict() for b in sn.breaks], "images": results})
    if failed_verify:
        err.print(f"[bold red]verify failed:[/] the one-pass map differs from crop-by-crop "
                  f"evaluation by more than {results[0]['verify']['tolerance']:g}")
        raise typer.Exit(1)

def _write_maps(path: Path, maps: dict[str, Any], results: list[dict[str, Any]]) -> None:
    import numpy as np

    from cnncli.sliding.slide import save_npz
    suffix = path.suffix.lower()
    if suffix == ".npy":
        scores = next(iter(maps.values()))
        write_atomically([(path, lambda fh: np.save(fh, scores))])
    elif suffix == ".npz":
        save_npz(path, maps)
    else:
        data = [dict(r, score_map_values=m.tolist()) for r, m in
                zip(results, maps.values(), strict=True)]
        write_text(path, json.dumps({"images": data}, allow_nan=False))
    err.print(f"wrote the score map{'s' if len(maps) > 1 else ''} to {escape(str(path))} "
              "(\\[rows, columns, classes] per image)")
