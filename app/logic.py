"""What the app decides, kept free of Streamlit and of the network so it is tested on its own.

Settings, the per-class disposal data, which served models are offered, how a prediction is worded
(a low top score reads "not sure"), the results table and its CSV, and the words for every failure.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

import contract
from waste_client import ClassifierError, ClientSettings

APP_DIR = Path(__file__).resolve().parent
DEFAULT_BINS = APP_DIR / "bins.toml"
# Where the server is comes from the client library: the same WASTE_URL / WASTE_PROTOCOL
# variables and defaults as the scorer (localhost:8001 over gRPC unless told otherwise).
DEFAULT_URL = ClientSettings().urls[0]
DEFAULT_MODEL = contract.DEFAULT_MODEL
#: Below this top probability the app asks instead of answering, for a model that records no "not
#: sure" threshold of its own (a model that does is asked with its own, chosen on validation:
#: MODEL_CARD.md). 0.5 means "more likely this than everything else together", the plainest line
#: a person can be told; the sidebar moves it.
DEFAULT_THRESHOLD = 0.5
#: The threshold setting that means "the served model's own".
MODEL_THRESHOLD = "model"
#: Per uploaded file, in MB (Streamlit's unit, MiB): the server refuses an image over 32 MiB
#: (`contract.MAX_IMAGE_BYTES`) anyway, so a larger upload would only cost memory on both sides.
DEFAULT_MAX_UPLOAD_MB = contract.MAX_IMAGE_BYTES // (1024 * 1024)
#: Images classified in one run: each costs a request plus a thumbnail held in the page, and a run
#: of a few hundred would keep one session busy for minutes on a small server.
DEFAULT_MAX_FILES = 50
CLASSIFIER_SUFFIX = contract.CLASSIFIER_SUFFIX
TTA_SUFFIX = contract.TTA_SUFFIX
HOW_TO_START = (
    "Start one with `make serve` (or `.venv/bin/python -m server.launch`), or start the app with "
    "`make app DEV=1` for a random-weight demo model."
)


@dataclass(frozen=True)
class Settings:
    """Where the app finds its server and how it judges an answer.

    Attributes
    ----------
    server_url : str
        ``host:port`` of the server's endpoint for ``protocol``.
    protocol : {"http", "grpc"}
    model : str
        Preferred model (ensemble) name; the selector starts on it when the server has it.
    threshold : float or None
        Top score under which the answer is worded as a question; None (``WASTE_THRESHOLD=model``,
        the default): the served model's "not sure" threshold, ``DEFAULT_THRESHOLD`` without one.
    bins_path : Path
        The disposal data file.
    max_upload_mb : int
        Largest file the uploader accepts, in MB (also Streamlit's ``server.maxUploadSize``).
    max_files : int
        Most images classified in one run; the page refuses the rest with a message.
    """

    server_url: str = DEFAULT_URL
    protocol: str = ClientSettings().protocol
    model: str = DEFAULT_MODEL
    threshold: Optional[float] = None
    bins_path: Path = DEFAULT_BINS
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    max_files: int = DEFAULT_MAX_FILES


def load_settings(argv: Sequence[str] = (), environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from ``WASTE_*`` environment variables, overridden by command-line options.

    ``streamlit run app/streamlit_app.py -- --server-url HOST:PORT --model NAME`` passes the options
    after ``--``. Unknown arguments are ignored (Streamlit's and pytest's own).

    Parameters
    ----------
    argv : sequence of str
    environ : mapping

    Returns
    -------
    Settings

    Raises
    ------
    ValueError
        A threshold that is not a number in [0, 1], or a size or count limit that is not a
        positive integer.
    """
    parser = argparse.ArgumentParser(add_help=False)
    try:
        client = ClientSettings.from_env(environ)
    except ClassifierError as exc:
        raise ValueError(exc.message) from exc
    parser.add_argument("--server-url", default=client.url or "")
    parser.add_argument("--protocol", default=client.protocol, choices=("http", "grpc"))
    parser.add_argument("--model", default=environ.get("WASTE_MODEL", DEFAULT_MODEL))
    parser.add_argument("--threshold", default=environ.get("WASTE_THRESHOLD", MODEL_THRESHOLD))
    parser.add_argument("--bins", default=environ.get("WASTE_BINS", str(DEFAULT_BINS)))
    parser.add_argument("--max-upload-mb",
                        default=environ.get("WASTE_MAX_UPLOAD_MB", str(DEFAULT_MAX_UPLOAD_MB)))
    parser.add_argument("--max-files", default=environ.get("WASTE_MAX_FILES", str(DEFAULT_MAX_FILES)))
    args, _ = parser.parse_known_args(list(argv))
    limits = {}
    for name, variable in (("max_upload_mb", "WASTE_MAX_UPLOAD_MB"), ("max_files", "WASTE_MAX_FILES")):
        value = getattr(args, name)
        if not str(value).strip().isdigit() or int(value) < 1:
            raise ValueError(f"{variable} must be a positive whole number, not {value!r}")
        limits[name] = int(value)
    threshold = None
    if str(args.threshold).strip().lower() != MODEL_THRESHOLD:
        try:
            threshold = float(args.threshold)
        except ValueError:
            threshold = float("nan")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be '{MODEL_THRESHOLD}' or a number in [0, 1], not {args.threshold!r}")
    url = args.server_url.strip() or ClientSettings(protocol=args.protocol).urls[0]
    # People paste browser addresses; the client wants host:port.
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return Settings(url.rstrip("/"), args.protocol, args.model, threshold, Path(args.bins), **limits)


def limit_files(images: Sequence, max_files: int) -> tuple[list, str]:
    """The first ``max_files`` images, and a message naming the ones refused ("" when none).

    Refused files are said, never dropped in silence: a person who uploads 60 photos must learn
    that 10 were not classified, and which.
    """
    kept, refused = list(images[:max_files]), images[max_files:]
    if not refused:
        return kept, ""
    names = [str(item[0]) for item in refused]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return kept, (f"{len(images)} images given, but at most {max_files} are classified per run: "
                  f"the first {max_files} are below; {len(refused)} not classified ({shown}). "
                  "Remove some and upload the rest in another run.")


# -- disposal data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Disposal:
    """What to do with one class of item."""

    bin: str
    advice: str
    hazardous: bool = False


def load_bins(path: Path | str = DEFAULT_BINS) -> dict[str, Disposal]:
    """Read the disposal data file (see ``app/bins.toml``).

    Parameters
    ----------
    path : Path or str

    Returns
    -------
    dict of str to Disposal
        Keyed by class name.

    Raises
    ------
    ValueError
        The file is not valid TOML or an entry lacks ``bin`` / ``advice``.
    """
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
    bins = {}
    for name, entry in data.get("classes", {}).items():
        if not entry.get("bin") or not entry.get("advice"):
            raise ValueError(f"{path}: class {name!r} needs both 'bin' and 'advice'")
        bins[name] = Disposal(str(entry["bin"]), str(entry["advice"]), bool(entry.get("hazardous")))
    return bins


def disposal_for(label: str, bins: Mapping[str, Disposal]) -> Disposal:
    """The entry for ``label``, or a safe fallback when the data file has none."""
    return bins.get(label) or Disposal(
        "Unknown: ask your local waste service",
        f"The disposal data has no entry for {label!r}; do not guess, check locally.")


# -- models ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """A servable classifier as the selector shows it."""

    name: str
    version: str
    tta: bool  # its `<name>_tta` ensemble is ready too

    @property
    def title(self) -> str:
        return f"{self.name} (v{self.version})" if self.version else self.name


def model_choices(models: Iterable, preferred: str = DEFAULT_MODEL) -> list[ModelChoice]:
    """The ensembles a person can pick, from the server's ready models.

    A ready model ``X`` is offered when ``X_classifier`` is ready too: that leaves out the
    classifiers themselves, the helper models (``preprocess``, ``tta_flip``, ...) and the ``_tta``
    twins, which the TTA switch selects instead.

    Parameters
    ----------
    models : iterable of ModelInfo
        ``Classifier.models()`` (objects with ``name`` and ``version``).
    preferred : str
        Put first when present.

    Returns
    -------
    list of ModelChoice
    """
    models = list(models)
    names = {m.name for m in models}
    choices = [
        ModelChoice(m.name, str(m.version), f"{m.name}{TTA_SUFFIX}" in names)
        for m in models
        if f"{m.name}{CLASSIFIER_SUFFIX}" in names
    ]
    # Newest version first within a name; the preferred name first overall.
    choices.sort(key=lambda c: (c.name != preferred, c.name, -_version_number(c.version)))
    return choices


def _version_number(version: str) -> int:
    try:
        return int(version)
    except ValueError:
        return 0


def served_model(choice: ModelChoice, tta: bool) -> tuple[str, str]:
    """(model name, version) to ask the server for; the TTA ensemble keeps its own versions."""
    if tta and choice.tta:
        return f"{choice.name}{TTA_SUFFIX}", ""
    return choice.name, choice.version


# -- wording -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How one prediction is said."""

    label: str
    score: float
    confident: bool
    headline: str
    runner_up: Optional[str] = None


def verdict(top_k: Sequence[tuple[str, float]], threshold: float) -> Verdict:
    """Word a prediction: an answer when the top score reaches ``threshold``, else a question.

    Parameters
    ----------
    top_k : sequence of (label, score)
        Best first, at least one pair.
    threshold : float

    Returns
    -------
    Verdict
        ``headline`` is ``"Prediction: paper (93%)"`` or
        ``"Not sure: is it paper or cardboard? (top score 41%)"``.
    """
    label, score = top_k[0]
    runner_up = top_k[1][0] if len(top_k) > 1 else None
    if score >= threshold:
        return Verdict(label, score, True, f"Prediction: {label} ({score:.0%})", runner_up)
    question = f"is it {label} or {runner_up}?" if runner_up else f"is it {label}?"
    return Verdict(label, score, False, f"Not sure: {question} (top score {score:.0%})", runner_up)


# -- results table -----------------------------------------------------------------------------

CSV_COLUMNS = ("file", "label", "score", "confident", "runner_up", "runner_up_score", "bin",
               "model", "version", "error")


@dataclass
class ResultRow:
    """One uploaded image's outcome, as the table and the CSV show it."""

    file: str
    label: str = ""
    score: Optional[float] = None
    confident: Optional[bool] = None
    runner_up: str = ""
    runner_up_score: Optional[float] = None
    bin: str = ""
    model: str = ""
    version: str = ""
    error: str = ""
    thumbnail: str = field(default="", repr=False)  # data URL, table only


def result_row(file: str, prediction=None, error: str = "", *, threshold: float = DEFAULT_THRESHOLD,
               bins: Mapping[str, Disposal] = {}, thumbnail: str = "") -> ResultRow:
    """Build one row from a ``waste_client.Prediction`` (or an error message)."""
    if prediction is None:
        return ResultRow(file, error=error or "no prediction", thumbnail=thumbnail)
    v = verdict(prediction.top_k, threshold)
    second = prediction.top_k[1] if len(prediction.top_k) > 1 else ("", None)
    return ResultRow(file, v.label, round(v.score, 4), v.confident, second[0],
                     None if second[1] is None else round(second[1], 4),
                     disposal_for(v.label, bins).bin, prediction.model, prediction.version,
                     thumbnail=thumbnail)


TABLE_COLUMNS = ("file", "label", "score", "runner_up", "bin", "error")


def results_html(rows: Iterable[ResultRow]) -> str:
    """The results table as HTML with thumbnails; every value escaped.

    HTML rather than ``st.dataframe``: the dataframe needs pyarrow, whose current releases refuse
    the NumPy 1.26 this project pins (the classifier stack needs it), and an image column is plain
    ``<img>`` here.
    """
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("image", *TABLE_COLUMNS))
    body = []
    for r in rows:
        cells = [f'<img src="{html.escape(r.thumbnail, quote=True)}" alt="" width="64">'
                 if r.thumbnail else ""]
        for c in TABLE_COLUMNS:
            value = getattr(r, c)
            if c == "score" and value is not None:
                value = f"{value:.0%}" + ("" if r.confident else " (not sure)")
            cells.append(html.escape("" if value is None else str(value)))
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f'<table class="waste-results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def rows_to_csv(rows: Iterable[ResultRow]) -> str:
    """The results table as CSV text (no thumbnails)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: "" if getattr(r, c) is None else getattr(r, c) for c in CSV_COLUMNS})
    return out.getvalue()


def thumbnail_data_url(pixels, size: int = 64) -> str:
    """A small PNG data URL, for the table, of the server's letterboxed view of an image.

    The app never decodes an uploaded file itself: a 179 MP upload or a decode-cost attack would
    run in the app's process. `pixels` is `Service.preprocess`'s answer, a uint8 (224, 224, 3)
    array whose size the server fixed.

    Raises
    ------
    ValueError
        `pixels` is not an (H, W, 3) uint8 array (e.g. the upload's bytes).
    """
    from PIL import Image

    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3
            and pixels.shape[2] == 3):
        raise ValueError("thumbnail_data_url takes the server's letterboxed uint8 (H, W, 3) pixels")
    img = Image.fromarray(pixels, "RGB").resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- failures ----------------------------------------------------------------------------------


def describe_error(exc: BaseException, settings: Settings, model: str = "") -> str:
    """A message for a person: what failed and what to do; never a traceback.

    Parameters
    ----------
    exc : BaseException
        Usually a ``waste_client.ClassifierError``.
    settings : Settings
    model : str
        The model that was asked for, if any.

    Returns
    -------
    str
        Markdown.
    """
    status = getattr(exc, "status", "")
    message = getattr(exc, "message", None) or str(exc)
    where = f"`{settings.server_url}` ({settings.protocol})"
    if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return f"The classification server at {where} does not answer. {HOW_TO_START}"
    if status == "NOT_FOUND" and model:
        return (f"The server at {where} has no ready model `{model}`. List the ready models in the "
                f"sidebar; if the trained model is not exported yet, run the export step, or start "
                f"a server on a repository that has it. {HOW_TO_START}")
    if status == "INVALID_ARGUMENT":
        return f"This file could not be classified: {message}"
    return f"The server at {where} answered with an error ({status or type(exc).__name__}): {message}"
