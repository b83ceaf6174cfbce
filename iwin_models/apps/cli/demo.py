"""``iwin-seg demo``: serve the demo page (:mod:`iwin_models.apps.demo`) on this machine.

Needs the demo extra (``pip install 'iwin-models[demo]'``: Gradio), checked before anything else is done. The
page offers the registered segmenters and, in its detection tab, the detectors with released weights (their
official weights where the torch.hub cache has them, else random weights, said on the page; ``--download`` fetches
them on first use) and the model given by ``--model`` / ``--weights`` (a segmenter's folder, weights file or hub
repository, or a registered detector's name with its weights), which is loaded before the page is served so that
a bad path is this command's one-line error.
"""
from __future__ import annotations

from ..demo import MAX_PIXELS, DemoSession, build_app, default_choices, serve
from ..demo.app import HOST, MAX_FILE_SIZE, PORT
from .common import add_fast_option, add_model_arguments, add_precision_option, check_dependencies, parse_device


def add_arguments(parser) -> None:
    parser.add_argument("--host", default=HOST,
                        help="address to serve on (default: %(default)s; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=PORT, help="port (default: %(default)s)")
    add_model_arguments(parser)
    add_precision_option(parser, help="the page's default precision")
    add_fast_option(parser)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, metavar="N",
                        help=f"photos over N pixels are refused before decoding (default: {MAX_PIXELS / 1e6:g} MP)")
    parser.add_argument("--max-file-size", default=MAX_FILE_SIZE, metavar="SIZE",
                        help="largest upload, e.g. 20mb (default: %(default)s)")
    parser.add_argument("--download", action="store_true",
                        help="download the official weights of the registered models on first use "
                             "(default: those in the torch.hub cache; the others run with random weights)")


def run(args) -> int:
    from ...extras import require

    check_dependencies(lambda: require("demo", purpose="iwin-seg demo"))
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    parse_device(args.device)
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be positive, got {args.max_pixels}")

    choices, default = default_choices(args.model, args.weights, download=args.download)
    session = DemoSession(choices, default=default, device=args.device, fast=args.fast,
                          max_pixels=args.max_pixels or MAX_PIXELS, precision=args.precision)
    if session.choices[default].start != "random":
        session.model(default)  # the model asked for: a bad path fails here, and the first photo is quick
    app = build_app(session)
    try:
        serve(app, args.host, args.port, max_file_size=args.max_file_size)
    except OSError as e:
        if "port" not in str(e).lower():
            raise
        raise OSError(f"cannot serve on {args.host}:{args.port} (in use, or not this machine's address): "
                      f"choose another --port or --host") from e
    return 0
