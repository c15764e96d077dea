"""Connection settings: one object built from options and ``WASTE_*`` environment variables.

The library, the bulk scorer and the app read the same variables, so one deployment is
described once (docs/CONTRACT.md lists them):

``WASTE_URL``, ``WASTE_PROTOCOL``, ``WASTE_MODEL``, ``WASTE_CA_FILE``, ``WASTE_CLIENT_CERT``,
``WASTE_CLIENT_KEY``, ``WASTE_API_KEY``, ``WASTE_BEARER_TOKEN``, ``WASTE_BASIC_AUTH``
(``user:password``), ``WASTE_TLS`` (``1`` for TLS with the system's CAs),
``WASTE_UNSURE_THRESHOLD`` (``model``, ``none``/``off`` or a probability).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from ._contract import DEFAULT_MODEL, MAX_IMAGE_BYTES
from ._errors import ClassifierError

#: One module per protocol holds all of its transport (its ``Transport`` class); adding a
#: protocol is one module and one line here.
TRANSPORT_MODULES = {"grpc": "._grpc", "http": "._http"}
PROTOCOLS = tuple(TRANSPORT_MODULES)
#: Triton's default ports; the URL default follows the protocol.
DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
#: Header carrying ``api_key``; nginx sees it as ``$http_x_api_key`` (docs/CONTRACT.md).
API_KEY_HEADER = "x-api-key"
#: The one default of ``top_k`` for the library, the scorer and the app.
DEFAULT_TOP_K = 3
#: ``unsure_threshold`` values that are not a number: read the model's threshold from its config,
#: or apply none.
UNSURE_FROM_MODEL = "model"
UNSURE_OFF = "none"

# field name -> environment variable; only these are read from the environment.
ENV_VARS = {
    "url": "WASTE_URL",
    "protocol": "WASTE_PROTOCOL",
    "model": "WASTE_MODEL",
    "ca_file": "WASTE_CA_FILE",
    "client_cert": "WASTE_CLIENT_CERT",
    "client_key": "WASTE_CLIENT_KEY",
    "api_key": "WASTE_API_KEY",
    "bearer_token": "WASTE_BEARER_TOKEN",
    "basic_auth": "WASTE_BASIC_AUTH",
    "tls": "WASTE_TLS",
    "unsure_threshold": "WASTE_UNSURE_THRESHOLD",
}
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ClientSettings:
    """Where the server is and how to reach it.

    Attributes
    ----------
    url : str or tuple of str
        ``host:port``, several comma-separated, or a sequence; ``""`` means Triton's
        default port of ``protocol`` on localhost.
    protocol : {"grpc", "http"}
    model : str
        Ensemble name.
    version : str
        ``""`` lets the server pick.
    timeout : float
        Seconds one attempt may take.
    connect_timeout : float
        Seconds to open a connection; short, so a dead URL is left for the next one quickly.
    retries : int
        Extra attempts of a transient failure, each on the next live URL.
    backoff, max_backoff : float
        Base and cap of the exponential backoff with full jitter, in seconds.
    concurrency : int
        Threads / connections of ``classify_many``.
    max_bytes : int
        Largest file sent; bigger ones fail with ``INVALID_ARGUMENT`` before being read.
    tls : bool
        Use TLS; implied by ``ca_file`` or a client certificate.
    ca_file : str or None
        PEM file of the CA(s) that sign the server certificate; None: the system's.
    client_cert, client_key : str or None
        PEM files of a client certificate (mutual TLS); both or neither.
    api_key : str or None
        Sent as the ``x-api-key`` header.
    bearer_token : str or None
        Sent as ``authorization: Bearer <token>``.
    basic_auth : str or None
        ``user:password``, sent as ``authorization: Basic ...``.
    unsure_threshold : {"model", "none"} or float
        When a :class:`~waste_client.Prediction` is ``unsure`` (best score below the threshold).
        ``"model"`` (default): the model's own threshold, the ``unsure_threshold`` parameter of its
        config on the server (written there from the served version's ``export.json``); a model
        without one has none. A probability in [0, 1] overrides it; ``"none"`` (or ``"off"``)
        applies none. Strings are accepted in any case (the environment gives strings).
    """

    url: Union[str, Tuple[str, ...]] = ""
    protocol: str = "grpc"
    model: str = DEFAULT_MODEL
    version: str = ""
    timeout: float = 30.0
    connect_timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 5.0
    concurrency: int = 8
    max_bytes: int = MAX_IMAGE_BYTES
    tls: bool = False
    ca_file: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    api_key: Optional[str] = None
    bearer_token: Optional[str] = None
    basic_auth: Optional[str] = None
    unsure_threshold: Union[str, float] = UNSURE_FROM_MODEL

    def __post_init__(self) -> None:
        protocol = str(self.protocol).lower()
        if protocol not in PROTOCOLS:
            raise ClassifierError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}",
                                  "INVALID_ARGUMENT")
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "unsure_threshold", parse_unsure_threshold(self.unsure_threshold))
        object.__setattr__(self, "version", str(self.version))
        if bool(self.client_cert) != bool(self.client_key):
            raise ClassifierError("client_cert and client_key go together (mutual TLS)", "INVALID_ARGUMENT")
        if self.bearer_token and self.basic_auth:
            raise ClassifierError("bearer_token and basic_auth both set the authorization header; "
                                  "give one", "INVALID_ARGUMENT")
        if self.basic_auth and ":" not in self.basic_auth:
            raise ClassifierError("basic_auth must be 'user:password'", "INVALID_ARGUMENT")
        for name in ("ca_file", "client_cert", "client_key"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ClassifierError(f"{name} {path!r} is not a file", "FILE_NOT_FOUND")
        if self.ca_file or self.client_cert:
            object.__setattr__(self, "tls", True)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **options: Any) -> "ClientSettings":
        """Settings from ``WASTE_*`` variables, overridden by ``options`` that are not None.

        Parameters
        ----------
        environ : mapping, optional
            Defaults to ``os.environ``.
        **options
            Any field of :class:`ClientSettings`; None means "not given".

        Returns
        -------
        ClientSettings

        Raises
        ------
        ClassifierError
            ``INVALID_ARGUMENT`` for a bad combination, ``FILE_NOT_FOUND`` for a missing PEM file.
        """
        environ = os.environ if environ is None else environ
        values: Dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            if environ.get(var):
                values[name] = environ[var].lower() in _TRUE if name == "tls" else environ[var]
        values.update({k: v for k, v in options.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> "ClientSettings":
        """A copy with some fields changed (None values are ignored).

        Returns
        -------
        ClientSettings
        """
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def urls(self) -> list:
        """list of str: the server URLs (Triton's default port of the protocol when none given)."""
        from ._request import normalize_urls

        return normalize_urls(self.url or DEFAULT_URLS[self.protocol])

    def headers(self) -> Dict[str, str]:
        """The authentication headers sent with every call (lower-case names, as gRPC needs).

        Returns
        -------
        dict of str to str
        """
        headers = {}
        if self.api_key:
            headers[API_KEY_HEADER] = self.api_key
        if self.bearer_token:
            headers["authorization"] = f"Bearer {self.bearer_token}"
        elif self.basic_auth:
            token = base64.b64encode(self.basic_auth.encode("utf-8")).decode("ascii")
            headers["authorization"] = f"Basic {token}"
        return headers

    def __repr__(self) -> str:
        # Secrets must not end up in logs or tracebacks.
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for secret in ("api_key", "bearer_token", "basic_auth"):
            if shown[secret]:
                shown[secret] = "***"
        return "ClientSettings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def parse_unsure_threshold(value: Any) -> Union[str, float]:
    """Normalise an ``unsure_threshold`` setting.

    Parameters
    ----------
    value : str or float
        ``"model"``, ``"none"``/``"off"`` (any case), a probability, or its text.

    Returns
    -------
    str or float
        :data:`UNSURE_FROM_MODEL`, :data:`UNSURE_OFF` or a float in [0, 1].

    Raises
    ------
    ClassifierError
        ``INVALID_ARGUMENT`` for anything else.
    """
    number: Any = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == UNSURE_FROM_MODEL:
            return UNSURE_FROM_MODEL
        if text in (UNSURE_OFF, "off"):
            return UNSURE_OFF
        try:
            number = float(text)
        except ValueError:
            number = None
    if isinstance(number, (int, float)) and not isinstance(number, bool) and 0.0 <= float(number) <= 1.0:
        return float(number)
    raise ClassifierError(f"unsure_threshold must be 'model', 'none' (or 'off') or a probability in [0, 1], "
                          f"not {value!r}", "INVALID_ARGUMENT")


def add_connection_arguments(parser: argparse.ArgumentParser, retries: int = 3) -> None:
    """Declare the connection options (server, model, timeouts, TLS, auth) on ``parser``.

    Every option defaults to its ``WASTE_*`` variable, then to :class:`ClientSettings`'s
    default; :func:`settings_from_args` turns the parsed namespace into settings.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    retries : int
        Default of ``--retries`` (a bulk job wants more than an interactive call).

    Returns
    -------
    None
    """
    d = ClientSettings()
    group = parser.add_argument_group("server connection (each option defaults to its WASTE_* variable)")
    group.add_argument("--url", default=None,
                       help="server host:port, several comma-separated "
                            "(env WASTE_URL; default localhost:8001 gRPC, localhost:8000 HTTP)")
    group.add_argument("--protocol", choices=PROTOCOLS, default=None,
                       help=f"env WASTE_PROTOCOL (default: {d.protocol})")
    group.add_argument("--model", default=None, help=f"ensemble name, env WASTE_MODEL (default: {d.model})")
    group.add_argument("--model-version", default=None, help="default: the server's choice")
    group.add_argument("--timeout", type=float, default=None,
                       help=f"seconds per attempt (default: {d.timeout:g})")
    group.add_argument("--connect-timeout", type=float, default=None,
                       help=f"seconds to connect to one URL (default: {d.connect_timeout:g})")
    group.add_argument("--retries", type=int, default=retries,
                       help="retries of a transient server error, each on the next live URL "
                            "(default: %(default)s)")
    group.add_argument("--tls", action="store_true", default=None,
                       help="TLS with the system's CAs (env WASTE_TLS=1; implied by --ca-file)")
    group.add_argument("--ca-file", default=None, help="PEM CA bundle for the server certificate (env WASTE_CA_FILE)")
    group.add_argument("--client-cert", default=None, help="PEM client certificate (env WASTE_CLIENT_CERT)")
    group.add_argument("--client-key", default=None, help="PEM client key (env WASTE_CLIENT_KEY)")
    # Secrets on a command line are visible to every user of the machine (ps); the help says so.
    group.add_argument("--api-key", default=None, help="x-api-key header; prefer env WASTE_API_KEY")
    group.add_argument("--bearer-token", default=None, help="prefer env WASTE_BEARER_TOKEN")
    group.add_argument("--basic-auth", default=None, metavar="USER:PASSWORD", help="prefer env WASTE_BASIC_AUTH")


def settings_from_args(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None,
                       **extra: Any) -> ClientSettings:
    """Settings from the options of :func:`add_connection_arguments`, then the environment.

    Parameters
    ----------
    args : argparse.Namespace
    environ : mapping, optional
        Defaults to ``os.environ``.
    **extra
        Other fields (e.g. ``concurrency``), None meaning "not given".

    Returns
    -------
    ClientSettings

    Raises
    ------
    ClassifierError
        As :meth:`ClientSettings.from_env`.
    """
    names = ("url", "protocol", "model", "timeout", "connect_timeout", "retries", "tls", "ca_file",
             "client_cert", "client_key", "api_key", "bearer_token", "basic_auth")
    options = {n: getattr(args, n, None) for n in names}
    options["version"] = getattr(args, "model_version", None)
    options.update(extra)
    return ClientSettings.from_env(environ, **options)


def resolve(settings: Optional[ClientSettings], url: Union[str, Sequence[str], None],
            options: Mapping[str, Any]) -> ClientSettings:
    """The settings a classifier uses: ``settings`` (or the environment) with explicit arguments on top.

    Parameters
    ----------
    settings : ClientSettings or None
        None reads the ``WASTE_*`` environment.
    url : str, sequence of str or None
    options : mapping
        Keyword arguments given to the classifier; None values mean "not given".

    Returns
    -------
    ClientSettings
    """
    given = {k: v for k, v in options.items() if v is not None}
    if url is not None:
        given["url"] = url if isinstance(url, str) else tuple(url)
    if settings is None:
        return ClientSettings.from_env(**given)
    return settings.replace(**given)


def load_transport(settings: ClientSettings) -> Any:
    """The transport of ``settings.protocol``, importing that protocol's libraries only.

    Parameters
    ----------
    settings : ClientSettings

    Returns
    -------
    waste_client._grpc.Transport or waste_client._http.Transport

    Raises
    ------
    ClassifierError
        ``FAILED_PRECONDITION`` when the protocol's extra is not installed.
    """
    try:
        module = importlib.import_module(TRANSPORT_MODULES[settings.protocol], __package__)
        return module.Transport(settings)
    except ImportError as exc:
        raise ClassifierError(
            f"the {settings.protocol} transport needs `pip install waste-client[{settings.protocol}]`: {exc}",
            "FAILED_PRECONDITION") from None
