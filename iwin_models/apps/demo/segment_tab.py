"""The segmentation tab of the demo page: its components (:func:`build`: the photo, the model, protocol and
precision menus, the result's pictures and downloads), its events, and their handlers (:func:`handle_run`: Segment;
:func:`handle_render`: the overlay again at another opacity or highlight, no model run). Gradio is passed in
(``gr``) by :func:`iwin_models.apps.demo.app.build_app`; nothing here imports it.

A tab is a module with ``LABEL``, ``KIND`` (the kind of model it offers), ``INTRO``, ``CSS`` and
``build(gr, session) -> components by name``, listed in :data:`iwin_models.apps.demo.app.TABS`.
"""
from __future__ import annotations

import html

from .choices import PROTOCOLS
from .gradio_env import accepted
from .photos import PhotoError, photo_file
from .pictures import class_map_picture, confidence_scale_html, legend_html, overlay_picture
from .session import KEEP_RESULTS, DemoResult, DemoSession

__all__ = ["LABEL", "KIND", "INTRO", "CSS", "build", "info_markdown", "highlight_choices", "handle_run",
           "handle_render"]

LABEL = "Segmentation"
KIND = "segmenter"  # the choices this tab offers
INTRO = "Upload, drag or paste a photo (or pick the sample), then **Segment**."
CSS = """
#legend ul {list-style: none; padding: 1.9em 0 0 0; margin: 0; columns: 2;}
#legend li {margin: 2px 0; white-space: nowrap;}
.confidence-scale {display: flex; align-items: center; gap: 6px; font-size: 0.85em;}
.confidence-scale .bar {flex: 1; height: 12px; border: 1px solid #444;}
"""


def build(gr, session: DemoSession) -> dict:
    """The tab's components (by name) and their events."""
    ui = _layout(gr, session)
    _wire(gr, session, ui)
    return ui


def info_markdown(result: DemoResult) -> str:
    """The line under a result: the photo's size, the model's input size(s), the settings and the seconds."""
    w, h = result.size
    sizes = result.input_sizes
    model_size = (f"{sizes[0][1]} x {sizes[0][0]}" if len(sizes) == 1 else
                  f"{len(sizes)} scales, {sizes[0][1]} x {sizes[0][0]} to {sizes[-1][1]} x {sizes[-1][0]}")
    shown = "" if result.shown_labels.shape == result.labels.shape else (
        f" (shown at {result.shown_labels.shape[1]} x {result.shown_labels.shape[0]}; downloads full size)")
    s = result.seconds
    return (f"**{html.escape(result.name)}**: {w} x {h} pixels ({w * h / 1e6:.1f} MP){shown}; model input "
            f"{model_size}; {html.escape(result.model)}, {result.protocol}, {result.precision}; "
            f"**{s['total']:.2f} s** (model {s['model']:.2f} s, reading {s['read']:.2f} s); mean confidence "
            f"{result.mean_confidence:.2f}")


def highlight_choices(result: DemoResult) -> list[tuple[str, int]]:
    """The highlight menu: every class of the legend (``-1``: none)."""
    return [("none (all classes)", -1)] + [(text, i) for i, text in result.legend if i is not None]


def _layout(gr, session: DemoSession) -> dict:
    """The components, by name."""
    from ...data import SAMPLE_IMAGE

    ui = {}
    with gr.Row():
        with gr.Column(scale=1):
            ui["photo"] = gr.Image(label="Photo", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                   elem_id="photo", height=320)
            gr.Examples(examples=[[str(SAMPLE_IMAGE)]], inputs=[ui["photo"]], label="Sample")
            ui["model"] = gr.Dropdown(session.labels(KIND), value=session.default_for(KIND),
                                      label="Segmenter", elem_id="model")
            ui["protocol"] = gr.Radio(list(PROTOCOLS), value="whole", label="Protocol", elem_id="protocol")
            ui["precision"] = gr.Radio(list(session.precisions), value=session.precision, label="Precision",
                                       elem_id="precision")
            ui["run"] = gr.Button("Segment", variant="primary", elem_id="run")
            # what is wrong with the photo, under the button
            ui["status"] = gr.Markdown("", elem_id="status", elem_classes=["iwin-status"])
        with gr.Column(scale=2):
            ui["note"] = gr.Markdown("", elem_id="note", elem_classes=["iwin-note"])  # random weights
            ui["info"] = gr.Markdown("", elem_id="info")
            ui.update(_results(gr))
    ui["state"] = gr.State(None)  # the key of the visitor's last result (DemoSession.keep)
    return ui


def _results(gr) -> dict:
    """The result's components: overlay and its controls, class map, confidence, legend, downloads."""
    ui = {}
    ui["overlay"] = gr.Image(label="Overlay", type="numpy", format="png", interactive=False, elem_id="overlay")
    with gr.Row():
        ui["opacity"] = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity", elem_id="opacity")
        ui["highlight"] = gr.Dropdown([("none (all classes)", -1)], value=-1, label="Highlight a class",
                                      elem_id="highlight")
    ui["legend"] = gr.HTML("", label="Classes present (share of the pixels)", show_label=True,
                           container=True, elem_id="legend", elem_classes=["iwin-classes"])
    with gr.Row():
        ui["class_map"] = gr.Image(label="Class map", type="numpy", format="png", interactive=False,
                                   elem_id="class_map")
        with gr.Column():
            ui["confidence"] = gr.Image(label="Confidence (top softmax score)", type="numpy", format="png",
                                        interactive=False, elem_id="confidence")
            gr.HTML(confidence_scale_html(), elem_id="confidence_scale")
    ui["downloads"] = gr.File(label="Downloads (full size: label PNG of class indices, overlay PNG)",
                              file_count="multiple", interactive=False, elem_id="downloads")
    return ui


def _wire(gr, session: DemoSession, ui: dict) -> None:
    """The events: Segment runs the model (one at a time, queued); opacity and highlight only re-render."""
    run_outputs = [ui[k] for k in ("overlay", "class_map", "confidence", "legend", "highlight", "downloads", "info",
                                   "note", "status", "state")]
    # preprocess=False: gr.Image would open the upload with PIL before our code runs (a corrupt file or an
    # oversize photo would then end in Gradio's bare "Error", and a JPEG's EXIF would be applied by Gradio as
    # well as by load_image); unprocessed, the handler gets the uploaded file's data (path, orig_name), which
    # Gradio has checked is one of its uploads, and reads it as `iwin-seg predict` does.
    ui["run"].click(lambda *a: handle_run(gr, session, *a), preprocess=False, concurrency_id="inference",
                    concurrency_limit=1, api_name="segment", outputs=run_outputs,
                    inputs=[ui[k] for k in ("photo", "model", "protocol", "precision", "opacity")])
    render = dict(fn=lambda *a: handle_render(gr, session, *a), outputs=[ui["overlay"], ui["downloads"]],
                  inputs=[ui["state"], ui["opacity"], ui["highlight"]], concurrency_id="render", concurrency_limit=1)
    ui["opacity"].release(**render, api_name="opacity")
    ui["highlight"].input(**render, api_name="highlight")


def handle_run(gr, session: DemoSession, photo, model_key, protocol, precision, opacity) -> tuple:
    """Segment: the outputs of a result (and its model's note), or on a photo that cannot be segmented the outputs
    cleared, the reason in the status line under the button and a toast (the server goes on serving)."""
    try:
        path, name = photo_file(photo, session.new_folder)
        result = session.run_segmentation(path, model_key, protocol, precision, name=name)
        opacity = float(opacity)
        files = [str(p) for p in session.downloads(result, opacity)]
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        message = str(e) if isinstance(e, PhotoError) else f"cannot segment this photo: {e}"
        gr.Warning(message, **accepted(gr.Warning, title="Cannot segment"))
        cleared = gr.update(choices=[("none (all classes)", -1)], value=-1)
        return None, None, None, "", cleared, None, "", "", f"**Error:** {html.escape(message)}", None
    note = f"**Warning:** {html.escape(result.note)}" if result.note else ""
    return (overlay_picture(result.shown_image, result.shown_labels, result.palette, opacity),
            class_map_picture(result.shown_labels, result.palette), result.confidence,
            legend_html(result.legend, result.palette), gr.update(choices=highlight_choices(result), value=-1),
            files, info_markdown(result), note, "", session.keep(result))


def handle_render(gr, session: DemoSession, key: str | None, opacity, highlight) -> tuple:
    """The overlay again at another opacity or highlight (no model run), and its download; unchanged, with a
    toast, once the result is no longer kept."""
    result = session.result(key)
    if result is None:
        if key:
            gr.Warning(f"this result is no longer kept (the server keeps the last {KEEP_RESULTS}): press Segment again")
        return gr.update(), gr.update()
    highlight = None if highlight is None or int(highlight) < 0 else int(highlight)
    shown = overlay_picture(result.shown_image, result.shown_labels, result.palette, float(opacity), highlight)
    return shown, [str(p) for p in session.downloads(result, float(opacity), highlight)]
