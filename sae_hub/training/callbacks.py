"""Training callbacks: optional experiment logging for :func:`~sae_hub.training.train_sae`.

The trainer's callback protocol is deliberately small, so that any logger fits without the trainer knowing it:

- a callback is a callable; every ``log_every`` steps (rank 0 only) it gets a copy of the metrics dict the trainer
  appends to ``Trainer.log`` (``step``, ``tokens``, ``lr``, ``loss``, ``recon``, ``aux``, ``l0``, ``fvu``,
  ``dead_fraction``, ...);
- optionally it has ``on_train_end(sae)``, called once after the SAE is built (and saved, when an output folder is
  set), with the SAE whose ``cfg.extra`` holds the training config and the final metrics.

:class:`WandbCallback` logs to Weights & Biases. wandb is not a dependency of sae-hub: it is imported when the
callback is constructed (``pip install 'sae-hub[wandb]'``), and a missing one is a
:class:`~sae_hub.errors.MissingDependencyError` naming that extra, never an import error at ``import sae_hub``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sae_hub.errors import ConfigError
from sae_hub.extras import require

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = ["WandbCallback"]


class WandbCallback:
    """Log a training run to Weights & Biases: ``train_sae(cfg, acts, callbacks=[WandbCallback(project="saes")])``.

    ``project`` and ``init_kwargs`` go to ``wandb.init`` (``name``, ``entity``, ``mode="offline"``, ``dir``, ...),
    called here, when the callback is made, so that a bad setting fails before training rather than after it.
    Or pass an existing ``run`` to log into (it is then left open unless ``finish=True``).

    Every metrics dict is logged at its trainer step (``run.log(metrics, step=metrics["step"])``), so wandb's
    x-axis is the optimiser step and the values are exactly those of ``sae.training_log``. At the end the run's
    config gets the resolved ``TrainConfig`` (``cfg.extra["training"]``: every default filled in, which is what
    reproduces the run) and its summary the final metrics, plus what the saved SAE is (architecture, d_sae,
    tokens trained on, and the batchtopk threshold or Matryoshka widths when there are any); then the run is
    finished (``finish=False`` keeps it open, e.g. to log evaluations of the returned SAE).
    """

    def __init__(self, project: str | None = None, *, run: Any = None, finish: bool | None = None,
                 **init_kwargs: Any) -> None:
        wandb = require("wandb", extra="wandb", purpose="logging training runs to Weights & Biases")
        if run is not None and (project is not None or init_kwargs):
            raise ConfigError("pass either run= (an existing wandb run) or project / wandb.init arguments, not both",
                              field="run")
        self.run = run if run is not None else wandb.init(project=project, **init_kwargs)
        self.finish = (run is None) if finish is None else bool(finish)

    def __call__(self, metrics: dict[str, Any]) -> None:
        """Log one metrics dict at its step."""
        step = int(metrics["step"])
        self.run.log({k: v for k, v in metrics.items() if k != "step"}, step=step)

    def on_train_end(self, sae: SAE) -> None:
        """Config and final metrics of the finished run into the wandb run (then finish it, see the class)."""
        extra = sae.cfg.extra
        training = dict(extra.get("training") or {})
        if training:
            self.run.config.update(training, allow_val_change=True)
        summary: dict[str, Any] = {k: v for k, v in dict(extra.get("metrics") or {}).items() if k != "step"}
        summary.update({"final_step": (extra.get("metrics") or {}).get("step"), "sae/architecture":
                        sae.cfg.architecture, "sae/d_sae": sae.cfg.d_sae})
        threshold = extra.get("batchtopk_threshold")
        if isinstance(threshold, dict) and "value" in threshold:
            summary["sae/batchtopk_threshold"] = threshold["value"]
        if extra.get("matryoshka_widths"):
            summary["sae/matryoshka_widths"] = list(extra["matryoshka_widths"])
        self.run.summary.update(summary)
        if self.finish:
            self.run.finish()
