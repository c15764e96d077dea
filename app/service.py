"""The app's calls to the Triton server: ready models, classification, the letterboxed input, occlusion.

Classification goes through `waste_client.Classifier`, so the app gives exactly the answers of the bulk
scorer and of every other client. Two more things are asked of the server's own models by name
(docs/CONTRACT.md) through the client's raw `Classifier.infer`, with the same URLs, credentials and
errors: `preprocess` for "the image as the model sees it" (the server's letterbox, not a copy of it)
and `<name>_classifier` for the occlusion batch.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from contract import (CLASSIFIER_INPUT, CLASSIFIER_OUTPUT, PREPROCESS_INPUT, PREPROCESS_MODEL,
                      PREPROCESS_OUTPUT)
from waste_client import Classifier, ClassifierError, ClientSettings, ModelInfo, Prediction

from app import heatmap
from app.logic import CLASSIFIER_SUFFIX


class Service:
    """One server, as the app uses it. Not shared between threads: one per Streamlit script run.

    Parameters
    ----------
    url : str
        ``host:port``.
    protocol : {"http", "grpc"}
    timeout : float
        Seconds per call. Short: a person is waiting, and a dead server must be reported at once.
    settings : waste_client.ClientSettings, optional
        TLS and credentials (default: the ``WASTE_*`` environment, as every client reads it).
    """

    def __init__(self, url: str, protocol: str = "http", timeout: float = 30.0,
                 settings: Optional[ClientSettings] = None):
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        # retries=0: the app reports an unreachable server instead of making a person wait
        # through backoffs; they can press the button again.
        self.settings = (settings or ClientSettings.from_env()).replace(
            url=url, protocol=protocol, timeout=timeout, retries=0)
        self._classifiers: Dict[Tuple[str, str], Classifier] = {}
        self._num_classes: Dict[str, int] = {}

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _classifier(self, model: str = "", version: str = "") -> Classifier:
        key = (model, version)
        if key not in self._classifiers:
            self._classifiers[key] = Classifier(settings=self.settings, model=model, version=version)
        return self._classifiers[key]

    def models(self) -> List[ModelInfo]:
        """The server's ready models.

        Raises
        ------
        ClassifierError
            ``UNAVAILABLE`` when the server does not answer.
        """
        return self._classifier("").models()

    def classify(self, data: bytes, model: str, version: str = "", top_k: int = 5) -> Prediction:
        """Classify encoded image bytes with ``model`` (an ensemble).

        Raises
        ------
        ClassifierError
        """
        return self._classifier(model, version).classify(data, top_k=top_k)

    def unsure_threshold(self, model: str) -> Optional[float]:
        """``model``'s own "not sure" threshold (its config's, from its export.json), None without one.

        A server that cannot be asked gives None: the page then says what is wrong when it classifies.
        """
        try:
            return self._classifier(model).unsure_threshold(model)
        except ClassifierError:
            return None

    def preprocess(self, data: bytes) -> np.ndarray:
        """The server's `preprocess` output for ``data``: uint8 (224, 224, 3), letterboxed RGB.

        Raises
        ------
        ClassifierError
        """
        arrays = self._classifier().infer(
            PREPROCESS_MODEL, {PREPROCESS_INPUT: np.array([[data]], dtype=np.object_)}, [PREPROCESS_OUTPUT])
        return arrays[PREPROCESS_OUTPUT][0]

    def class_scores(self, pixels: np.ndarray, classifier: str) -> List[Dict[str, float]]:
        """Every class's probability for each image of a uint8 (N, 224, 224, 3) batch, one request.

        The classification extension with ``class_count`` = all classes returns labelled scores, so
        the label order comes from the server's labels.txt, never from a copy here.

        Raises
        ------
        ClassifierError
        """
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        entries = self._classifier().infer(
            classifier, {CLASSIFIER_INPUT: pixels},
            {CLASSIFIER_OUTPUT: self._classes(classifier)})[CLASSIFIER_OUTPUT]
        rows = []
        for row in entries.reshape(len(pixels), -1):
            scores = {}
            for entry in row:
                text = entry.decode() if isinstance(entry, bytes) else str(entry)
                score, _, label = text.split(":", 2)
                scores[label] = float(score)
            rows.append(scores)
        return rows

    def occlusion(self, pixels: np.ndarray, model: str, label: str,
                  grid: int = heatmap.GRID) -> np.ndarray:
        """Occlusion importance of each grid cell for ``label`` (see `app.heatmap`).

        Parameters
        ----------
        pixels : ndarray, uint8, (224, 224, 3)
            The letterboxed input (`preprocess`).
        model : str
            The ensemble name; its ``<model>_classifier`` is asked (a ``_tta`` name is reduced to
            its base: the map explains the single view).
        label : str
            The class to explain.

        Returns
        -------
        ndarray, float, (grid, grid) in [0, 1]

        Raises
        ------
        ClassifierError
        """
        base = model[: -len("_tta")] if model.endswith("_tta") else model
        rows = self.class_scores(heatmap.occluded_copies(pixels, grid), base + CLASSIFIER_SUFFIX)
        return heatmap.importance(np.array([r.get(label, 0.0) for r in rows]), grid)

    def _classes(self, model: str) -> int:
        if model not in self._num_classes:
            meta = self._classifier().model_metadata(model)
            output = next(o for o in meta["outputs"] if o["name"] == CLASSIFIER_OUTPUT)
            self._num_classes[model] = int(output["shape"][-1])
        return self._num_classes[model]

    def close(self) -> None:
        """Close every connection; safe to call twice."""
        for clf in self._classifiers.values():
            clf.close()
        self._classifiers = {}
