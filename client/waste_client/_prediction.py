"""Result types and the parsing of Triton's classification-extension strings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple, Union

from ._errors import ClassifierError


@dataclass(frozen=True)
class Prediction:
    """The answer for one image.

    Attributes
    ----------
    label : str
        The most probable class name, also when ``unsure``: what to do with an unsure answer
        (ask the person, show the runner-up, write ``unsure``) is the caller's decision.
    score : float
        Its probability, in [0, 1].
    top_k : list of (str, float)
        The ``top_k`` best (label, score) pairs, best first; ``top_k[0]`` is
        ``(label, score)``.
    model : str
        The model that answered.
    version : str
        The model version that answered (from the response).
    source : str or None
        The path the image was read from, None for raw bytes.
    unsure : bool
        ``score < threshold``: the model is not sure enough to be taken at its word. False when
        no threshold applies.
    threshold : float or None
        The "not sure" threshold applied: by default the model's own (the ``unsure_threshold``
        of its config, from the served version's ``export.json``), or the caller's
        ``unsure_threshold`` setting; None when none applies (a model without one, or ``"none"``).
    """

    label: str
    score: float
    top_k: List[Tuple[str, float]]
    model: str
    version: str
    source: Optional[str] = None
    unsure: bool = False
    threshold: Optional[float] = None


@dataclass(frozen=True)
class ModelInfo:
    """One ready model of the server's repository.

    Attributes
    ----------
    name : str
    version : str
    state : str
        ``"READY"`` for every entry :meth:`Classifier.models` returns.
    """

    name: str
    version: str
    state: str = "READY"


@dataclass(frozen=True)
class Result:
    """One item's outcome from ``classify_many``: exactly one of prediction / error is set.

    Attributes
    ----------
    item : str, os.PathLike or bytes
        The item as it was given.
    prediction : Prediction or None
    error : ClassifierError or None
    """

    item: Any
    prediction: Optional[Prediction] = None
    error: Optional[ClassifierError] = field(default=None)

    @property
    def ok(self) -> bool:
        """bool: True when the item was classified."""
        return self.error is None


def parse_class_entry(entry: Union[bytes, str]) -> Tuple[str, float]:
    """Parse one classification-extension string.

    Triton answers ``class_count=k`` with ``"score:index:label"`` strings
    (``"score:index"`` when the output has no label file).

    Parameters
    ----------
    entry : bytes or str
        One element of the output tensor, e.g. ``b"0.9123:7:paper"``.

    Returns
    -------
    (str, float)
        The label (the index as a string when the model has no labels) and the score.

    Raises
    ------
    ClassifierError
        With status ``"INTERNAL"`` when the string is not in that format.
    """
    text = entry.decode("utf-8") if isinstance(entry, (bytes, bytearray)) else str(entry)
    # maxsplit=2 keeps a label that itself contains ':' whole.
    parts = text.split(":", 2)
    try:
        score = float(parts[0])
        index = int(parts[1])
    except (IndexError, ValueError):
        raise ClassifierError(f"unexpected classification entry {text!r}", "INTERNAL") from None
    label = parts[2] if len(parts) == 3 else str(index)
    return label, score


def parse_classification(
    entries: Sequence[Union[bytes, str]],
    model: str,
    version: str,
    source: Optional[str] = None,
    threshold: Optional[float] = None,
) -> Prediction:
    """Build a :class:`Prediction` from the class strings of one image.

    Parameters
    ----------
    entries : sequence of bytes or str
        The classification strings of one image, any order.
    model, version : str
        Who answered.
    source : str, optional
        Where the image came from.
    threshold : float, optional
        The "not sure" threshold: the prediction is ``unsure`` when its best score is below it.

    Returns
    -------
    Prediction

    Raises
    ------
    ClassifierError
        With status ``"INTERNAL"`` when there is no entry or one cannot be parsed.
    """
    pairs = sorted((parse_class_entry(e) for e in entries), key=lambda p: p[1], reverse=True)
    if not pairs:
        raise ClassifierError("the server returned no classes", "INTERNAL")
    label, score = pairs[0]
    unsure = threshold is not None and score < threshold
    return Prediction(label, score, pairs, model, str(version), source, unsure, threshold)
