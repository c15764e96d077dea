"""The Streamlit page. Decisions live in `app.logic`, server calls in `app.service`, figures in `app.charts`."""
from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Tuple

import streamlit as st

from contract import IMAGE_EXTENSIONS
from waste_client import ClassifierError

from app import charts, heatmap
from app.logic import (
    DEFAULT_THRESHOLD,
    HOW_TO_START,
    load_settings,
    ModelChoice,
    Settings,
    describe_error,
    disposal_for,
    limit_files,
    load_bins,
    model_choices,
    result_row,
    results_html,
    rows_to_csv,
    served_model,
    thumbnail_data_url,
    verdict,
)
from app.service import Service

#: What the uploader accepts: the contract's extensions, without the dot as Streamlit wants them.
IMAGE_TYPES = sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


def main(argv=()) -> None:
    """Render the page for command-line options ``argv`` (after ``--``) and the WASTE_* variables.

    Every failure ends as a message on the page, never as a traceback.
    """
    st.set_page_config(page_title="Which bin?", page_icon=":recycle:", layout="wide")
    st.title("Which bin? Waste photo classifier")
    try:
        settings = load_settings(argv)
    except ValueError as exc:
        st.error(f"Bad setting: {exc}. Check the WASTE_* variables / options (WASTE_THRESHOLD is "
                 "a number in [0, 1]).")
        return
    try:
        with Service(settings.server_url, settings.protocol) as service:
            _page(settings, service)
    except ClassifierError as exc:
        st.error(describe_error(exc, settings))
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        st.error(f"Something went wrong in the app: {type(exc).__name__}: {exc}. "
                 "Reload the page; if it persists, report it with the steps that led here.")


def _page(settings: Settings, service: Service) -> None:
    try:
        bins = load_bins(settings.bins_path)
    except (OSError, ValueError) as exc:
        st.error(f"The disposal data file cannot be read ({exc}). Point `WASTE_BINS` at a valid "
                 "file such as `app/bins.toml`.")
        return

    sidebar = st.sidebar
    sidebar.header("Server")
    sidebar.caption(f"`{settings.server_url}` ({settings.protocol})")
    try:
        ready = service.models()
    except ClassifierError as exc:
        st.error(describe_error(exc, settings))
        return
    choices = model_choices(ready, settings.model)
    if not choices:
        st.error(f"The server at `{settings.server_url}` answers but has no classifier ready "
                 f"(a model `X` with its `X_classifier`). Ready: "
                 f"{', '.join(m.name for m in ready) or 'none'}. Export a model into the "
                 f"repository and restart the server. {HOW_TO_START}")
        return
    if settings.model not in {c.name for c in choices}:
        st.warning(f"Model `{settings.model}` is not ready on the server (the trained model may not "
                   f"be exported yet); using `{choices[0].name}`.")

    choice: ModelChoice = sidebar.selectbox("Model", choices, format_func=lambda c: c.title)
    tta = sidebar.toggle("Test-time augmentation (image + mirror, averaged)", value=False, key="tta",
                         disabled=not choice.tta,
                         help=None if choice.tta else f"`{choice.name}_tta` is not ready")
    model, version = served_model(choice, tta)
    own = service.unsure_threshold(model) if settings.threshold is None else None
    start = settings.threshold if settings.threshold is not None else own if own is not None else DEFAULT_THRESHOLD
    threshold = sidebar.slider(
        "Say 'not sure' below this top score", 0.0, 1.0, float(start), 0.01,
        help=(f"Starts at `{model}`'s own threshold, chosen on validation (MODEL_CARD.md)" if own is not None
              else "WASTE_THRESHOLD sets where it starts" if settings.threshold is not None
              else f"`{model}` records no threshold of its own; this starts at {DEFAULT_THRESHOLD}"))
    show_heatmap = sidebar.toggle("Occlusion heatmap", value=True, key="heatmap",
                                  help="One extra request of 50 images: see app/heatmap.py")
    sidebar.caption(f"Asking `{model}`" + (f" v{version}" if version else ""))

    images, refusal = _read(*limit_files(_inputs(settings.max_upload_mb), settings.max_files),
                            max_bytes=settings.max_upload_mb * 1024 * 1024)
    if not images:
        st.info("Upload one or more photos of a single item each, or take one with the camera "
                f"(at most {settings.max_files} per run, {settings.max_upload_mb} MB each).")
        return
    if refusal:
        st.error(refusal)

    outcomes = [(name, data, *_classify(service, data, model, version)) for name, data in images]
    if len(outcomes) == 1:
        name, data, prediction, error = outcomes[0]
        _detail(service, settings, name, data, prediction, error, model, threshold, bins, show_heatmap)
        return

    rows = [result_row(name, prediction, _error_text(error, settings, model), threshold=threshold,
                       bins=bins, thumbnail=_thumbnail(service, data) if prediction else "")
            for name, data, prediction, error in outcomes]
    st.subheader(f"{len(rows)} images")
    # Only our own escaped HTML (logic.results_html) goes through unsafe_allow_html.
    st.markdown(results_html(rows), unsafe_allow_html=True)
    st.download_button("Download the table (CSV)", rows_to_csv(rows), file_name="predictions.csv",
                       mime="text/csv")
    titles = [f"{i + 1}. {o[0]}" for i, o in enumerate(outcomes)]
    picked = st.selectbox("Details for", range(len(outcomes)), format_func=lambda i: titles[i])
    name, data, prediction, error = outcomes[picked]
    _detail(service, settings, name, data, prediction, error, model, threshold, bins, show_heatmap)


def _inputs(max_upload_mb: int) -> List[Tuple[str, object]]:
    """(name, uploaded file) pairs, not yet read: the page reads only the files it classifies.

    Streamlit refuses a file over ``max_upload_mb`` before storing it: the uploader's own limit
    here and ``--server.maxUploadSize`` (app.run, docker/Dockerfile.app) for its HTTP endpoint.
    """
    uploads = st.file_uploader("Photos", type=IMAGE_TYPES, accept_multiple_files=True, key="photos",
                               max_upload_size=max_upload_mb)
    images = [(u.name, u) for u in uploads or []]
    # The camera widget asks the browser for permission as soon as it is drawn: only on request.
    if st.toggle("Use the camera", key="camera"):
        shot = st.camera_input("Take a photo of the item")
        if shot is not None:
            images.append(("camera.jpg", shot))
    return images


def _read(kept: List[Tuple[str, object]], refusal: str, max_bytes: int) -> Tuple[List[Tuple[str, bytes]], str]:
    """The bytes of the kept uploads; one over ``max_bytes`` is refused by name, never read."""
    images, oversize = [], []
    for name, upload in kept:
        if getattr(upload, "size", 0) > max_bytes:
            oversize.append(name)
        else:
            images.append((name, upload.getvalue()))
    if oversize:
        refusal = " ".join(m for m in (refusal, f"Over the {max_bytes // (1024 * 1024)} MB limit, not "
                                       f"classified: {', '.join(oversize)}.") if m)
    return images, refusal


def _thumbnail(service: Service, data: bytes) -> str:
    """The table's thumbnail, from the server's letterboxed view ("" when that is unavailable)."""
    try:
        pixels = _cached("preprocess", (service.url, _digest(data)), lambda: service.preprocess(data))
    except ClassifierError:
        return ""
    return thumbnail_data_url(pixels)


def _cached(kind: str, key: tuple, compute):
    """Per-session memo of server answers: a rerun (moving the slider) must not re-ask the server.

    Errors are not memoised, so pressing "rerun" after starting the server works.
    """
    memo: Dict = st.session_state.setdefault("_memo", {})
    full = (kind, *key)
    if full not in memo:
        if len(memo) > 512:
            memo.clear()
        memo[full] = compute()
    return memo[full]


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _classify(service: Service, data: bytes, model: str, version: str):
    """(prediction, None) or (None, error) for one image; a bad image must not stop the others."""
    try:
        key = (service.url, model, version, _digest(data))
        return _cached("classify", key, lambda: service.classify(data, model, version)), None
    except ClassifierError as exc:
        if exc.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_FOUND"):
            raise  # the server or the model is gone: one page-level message, not one per row
        return None, exc


def _error_text(error: Optional[ClassifierError], settings: Settings, model: str) -> str:
    return describe_error(error, settings, model) if error is not None else ""


def _detail(service, settings, name, data, prediction, error, model, threshold, bins,
            show_heatmap) -> None:
    st.subheader(name)
    if prediction is None:
        st.error(_error_text(error, settings, model))
        return
    v = verdict(prediction.top_k, threshold)
    (st.success if v.confident else st.warning)(v.headline)
    labels = [v.label] if v.confident or not v.runner_up else [v.label, v.runner_up]
    for label in labels:
        disposal = disposal_for(label, bins)
        text = f"**{label}: {disposal.bin}.** {disposal.advice}"
        (st.error if disposal.hazardous else st.info)(text)

    seen, heat, gauge = st.columns(3)
    pixels = None
    try:
        pixels = _cached("preprocess", (service.url, _digest(data)), lambda: service.preprocess(data))
        seen.image(pixels, width="stretch", caption="As the model sees it (224x224, letterboxed)")
    except ClassifierError as exc:
        seen.warning(f"Letterboxed view unavailable: {exc.message}")
    if show_heatmap and pixels is not None:
        try:
            importance = _cached("occlusion", (service.url, model, v.label, _digest(data)),
                                 lambda: service.occlusion(pixels, model, v.label))
            heat.image(heatmap.overlay(pixels, importance), width="stretch",
                       caption=f"What drove '{v.label}' (occlusion, {heatmap.GRID}x{heatmap.GRID}: "
                               "bright = hiding it lowers the score most)")
        except ClassifierError as exc:
            heat.warning(f"Heatmap unavailable: {exc.message}")
    gauge.plotly_chart(charts.confidence_gauge(v.score, threshold), width="stretch")
    st.plotly_chart(charts.top_k_bars(prediction.top_k), width="stretch")
    st.caption(f"Answered by `{prediction.model}` version {prediction.version or '?'}.")
