"""The app's calls to the Triton server: ready models, classification, the letterboxed input, occlusion.

Classification goes through `waste_client.Classifier`, so the app gives exactly the answers of the bulk
scorer and of every other client. Two things the client library does not offer are asked of the
server's own models by name (docs/CONTRACT.md): `preprocess` for "the image as the model sees it" (the
server's letterbox, not a copy of it) and `<name>_classifier` for the occlusion batch.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from waste_client import Classifier, ClassifierError, ModelInfo, Prediction
# Private, but it is the one mapping of tritonclient/network failures to ClassifierError statuses;
# the app must name failures exactly as the client does.
from waste_client._errors import to_classifier_error

from app import heatmap
from app.logic import CLASSIFIER_SUFFIX

PREPROCESS_MODEL = "preprocess"
PREPROCESS_INPUT = "preprocess_input"
PREPROCESS_OUTPUT = "preprocess_output"
CLASSIFIER_INPUT = "classifier_input"
CLASSIFIER_OUTPUT = "classifier_output"


class Service:
    """One server, as the app uses it. Not shared between threads: one per Streamlit script run.

    Parameters
    ----------
    url : str
        ``host:port``.
    protocol : {"http", "grpc"}
    timeout : float
        Seconds per call. Short: a person is waiting, and a dead server must be reported at once.
    """

    def __init__(self, url: str, protocol: str = "http", timeout: float = 30.0):
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        self._classifiers: Dict[Tuple[str, str], Classifier] = {}
        self._raw = None
        self._num_classes: Dict[str, int] = {}

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _classifier(self, model: str, version: str = "") -> Classifier:
        key = (model, version)
        if key not in self._classifiers:
            # retries=0: the app reports an unreachable server instead of making a person wait
            # through backoffs; they can press the button again.
            self._classifiers[key] = Classifier(self.url, protocol=self.protocol, model=model,
                                                version=version, timeout=self.timeout, retries=0)
        return self._classifiers[key]

    def _module(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _client(self):
        if self._raw is None:
            module = self._module()
            if self.protocol == "grpc":
                self._raw = module.InferenceServerClient(self.url)
            else:
                self._raw = module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout, network_timeout=self.timeout)
        return self._raw

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

    def preprocess(self, data: bytes) -> np.ndarray:
        """The server's `preprocess` output for ``data``: uint8 (224, 224, 3), letterboxed RGB.

        Raises
        ------
        ClassifierError
        """
        module = self._module()
        inp = module.InferInput(PREPROCESS_INPUT, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        out = module.InferRequestedOutput(PREPROCESS_OUTPUT)
        result = self._infer(PREPROCESS_MODEL, [inp], [out])
        return result.as_numpy(PREPROCESS_OUTPUT)[0]

    def class_scores(self, pixels: np.ndarray, classifier: str) -> List[Dict[str, float]]:
        """Every class's probability for each image of a uint8 (N, 224, 224, 3) batch, one request.

        The classification extension with ``class_count`` = all classes returns labelled scores, so
        the label order comes from the server's labels.txt, never from a copy here.

        Raises
        ------
        ClassifierError
        """
        module = self._module()
        inp = module.InferInput(CLASSIFIER_INPUT, list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
        out = module.InferRequestedOutput(CLASSIFIER_OUTPUT, class_count=self._classes(classifier))
        entries = self._infer(classifier, [inp], [out]).as_numpy(CLASSIFIER_OUTPUT)
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
            try:
                meta = self._client().get_model_metadata(model, as_json=True) \
                    if self.protocol == "grpc" else self._client().get_model_metadata(model)
            except Exception as exc:  # noqa: BLE001
                raise to_classifier_error(exc) from None
            output = next(o for o in meta["outputs"] if o["name"] == CLASSIFIER_OUTPUT)
            self._num_classes[model] = int(output["shape"][-1])
        return self._num_classes[model]

    def _infer(self, model: str, inputs, outputs):
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            return self._client().infer(model, inputs, outputs=outputs, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one ClassifierError
            raise to_classifier_error(exc) from None

    def close(self) -> None:
        """Close every connection; safe to call twice."""
        for clf in self._classifiers.values():
            clf.close()
        self._classifiers = {}
        if self._raw is not None:
            try:
                self._raw.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
            self._raw = None


