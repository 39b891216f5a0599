"""Fetch a feature's explanation and top logits from Neuronpedia's public API.

``GET {base}/api/feature/{modelId}/{source}/{index}`` (no key needed for reads) returns the feature record:
``explanations`` (each with a ``description``), ``pos_str``/``pos_values`` and ``neg_str``/``neg_values``
(top promoted / suppressed tokens), ``frac_nonzero`` (firing density), ``maxActApprox``, top activations
and more. A registry SAE's ``cfg.neuronpedia_id`` is ``"{modelId}/{source}"`` (e.g.
``"gpt2-small/0-res-jb"``). The base URL is, in order: the ``base_url`` argument, the ``NEURONPEDIA_URL``
environment variable, ``https://www.neuronpedia.org``.

Every failure (offline, timeout, HTTP error, a body that is not a feature) raises
:class:`NeuronpediaError`, a :class:`sae_hub.errors.DownloadError`, whose message names the URL.
``requests`` (extra ``analysis``) is imported inside :func:`feature`, so importing this module costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sae_hub.errors import ConfigError, NeuronpediaError
from sae_hub.neuronpedia_base import DEFAULT_BASE_URL, ENV_VAR, resolve_base_url

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = ["DEFAULT_BASE_URL", "NeuronpediaError", "NeuronpediaFeature", "feature", "feature_api_url",
           "resolve_base_url"]



@dataclass(frozen=True)
class NeuronpediaFeature:
    """The parts of a Neuronpedia feature record that analysis uses; ``raw`` keeps the whole JSON."""

    model_id: str
    source: str
    index: int
    explanations: list[str]
    top_logits: list[tuple[str, float]]  # pos_str / pos_values: promoted tokens, largest first
    bottom_logits: list[tuple[str, float]]  # neg_str / neg_values: suppressed tokens, most negative first
    frac_nonzero: float | None
    max_act_approx: float | None
    url: str  # the feature's page
    api_url: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


def _split_id(neuronpedia_id: str) -> tuple[str, str]:
    model_id, _, source = str(neuronpedia_id).strip("/").partition("/")
    if not model_id or not source or "/" in source:
        raise ConfigError(f"neuronpedia_id must be 'modelId/source' (e.g. 'gpt2-small/0-res-jb'), got "
                          f"{neuronpedia_id!r}", field="neuronpedia_id")
    return model_id, source


def feature_api_url(neuronpedia_id: str, index: int, base: str | None = None) -> str:
    """``{base}/api/feature/{modelId}/{source}/{index}``."""
    model_id, source = _split_id(neuronpedia_id)
    return f"{resolve_base_url(base)}/api/feature/{quote(model_id, safe='')}/{quote(source, safe='')}/{int(index)}"


def _pairs(strs: Any, values: Any) -> list[tuple[str, float]]:
    if not isinstance(strs, list) or not isinstance(values, list):
        return []
    return [(str(s), float(v)) for s, v in zip(strs, values, strict=False)]  # tolerate a ragged record


def _float(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def feature(sae: SAE | str, j: int, *, base_url: str | None = None, timeout: float = 10,
            session: Any = None) -> NeuronpediaFeature:
    """Fetch feature ``j`` of ``sae`` (an SAE with ``cfg.neuronpedia_id``, or the id itself) from Neuronpedia.

    ``timeout`` (seconds) bounds connecting and each read; ``session`` may be a ``requests.Session`` to
    reuse connections across many calls. Raises :class:`NeuronpediaError` on any failure, naming the URL.
    """
    from sae_hub.extras import require

    requests = require("requests", extra="analysis", purpose="Neuronpedia look-ups")

    if not isinstance(sae, str) and hasattr(sae, "cfg"):  # an SAE, by duck type: importing sae_hub.sae here would
        np_id = sae.cfg.neuronpedia_id                      # close an import cycle (sae -> hub -> ... -> here)
        if not np_id:
            raise ConfigError("this SAE has no neuronpedia_id (load it from a registry release that lists one, "
                              "or set cfg.neuronpedia_id)", field="neuronpedia_id")
        if not 0 <= int(j) < sae.cfg.d_sae:
            raise ConfigError(f"feature {j} is out of range [0, {sae.cfg.d_sae})", field="feature")
    else:
        np_id = str(sae)
    model_id, source = _split_id(np_id)
    base = resolve_base_url(base_url)
    url = feature_api_url(np_id, j, base)
    getter = session.get if session is not None else requests.get
    try:
        resp = getter(url, timeout=timeout, headers={"Accept": "application/json"})
    except requests.exceptions.Timeout:
        raise NeuronpediaError(f"Neuronpedia did not answer within {timeout} s: GET {url}", url=url) from None
    except requests.exceptions.ConnectionError as e:
        raise NeuronpediaError(f"cannot reach Neuronpedia (offline? set {ENV_VAR} for a mirror): GET {url} "
                               f"({type(e).__name__})", url=url) from None
    except requests.exceptions.RequestException as e:
        raise NeuronpediaError(f"request to Neuronpedia failed: GET {url}: {e}", url=url) from None
    status = resp.status_code
    if status == 404:
        raise NeuronpediaError(f"Neuronpedia has no feature {model_id}/{source}/{int(j)} (HTTP 404): GET {url}",
                               url=url, status=status)
    if status >= 400:
        body = resp.text[:200].replace("\n", " ")
        raise NeuronpediaError(f"Neuronpedia answered HTTP {status}: GET {url}: {body}", url=url, status=status)
    try:
        data = resp.json()
    except ValueError:
        raise NeuronpediaError(f"Neuronpedia's answer is not JSON: GET {url}", url=url, status=status) from None
    if not isinstance(data, dict) or not data:
        raise NeuronpediaError(f"Neuronpedia returned no feature record for {model_id}/{source}/{int(j)}: "
                               f"GET {url}", url=url, status=status)
    explanations = [str(e["description"]) for e in data.get("explanations") or []
                    if isinstance(e, dict) and e.get("description")]
    return NeuronpediaFeature(
        model_id=model_id, source=source, index=int(j), explanations=explanations,
        top_logits=_pairs(data.get("pos_str"), data.get("pos_values")),
        bottom_logits=_pairs(data.get("neg_str"), data.get("neg_values")),
        frac_nonzero=_float(data.get("frac_nonzero")), max_act_approx=_float(data.get("maxActApprox")),
        url=f"{base}/{model_id}/{source}/{int(j)}", api_url=url, raw=data,
    )
