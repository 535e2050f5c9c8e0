"""What a diffusers scheduler config says about training: a DDPM-family betas schedule, a flow-matching one, or a refusal by class name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError, ModelLoadError
from ..schedule import FlowSchedule, schedule_from_diffusers_config
from .config_io import check_schedule_steps

__all__ = ["DDPM_SCHEDULERS", "FLOW_SCHEDULERS", "ResolvedScheduler", "resolve_scheduler"]

# Samplers of one discrete-time process: they differ in how they step at inference, not in the
# betas the model was trained with, so the same Schedule describes them all.
DDPM_SCHEDULERS = frozenset({
    "DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler",
    "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverMultistepInverseScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler", "SASolverScheduler",
    "RePaintScheduler",
})
FLOW_SCHEDULERS = frozenset({"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"})

# Known classes whose model is not a DDPM or rectified flow, with what they are instead.
_REFUSED = {
    "ScoreSdeVeScheduler": "a score-SDE (variance-exploding) scheduler",
    "ScoreSdeVpScheduler": "a score-SDE (continuous variance-preserving) scheduler",
    "KarrasVeScheduler": "a Karras variance-exploding scheduler",
    "EDMEulerScheduler": "an EDM (Karras sigma-parametrised) scheduler",
    "EDMDPMSolverMultistepScheduler": "an EDM (Karras sigma-parametrised) scheduler",
    "CosineDPMSolverMultistepScheduler": "an EDM-style (sigma-parametrised) scheduler",
    "CMStochasticIterativeScheduler": "a consistency-model scheduler",
    "LCMScheduler": "a latent-consistency-model scheduler",
    "TCDScheduler": "a trajectory-consistency (TCD) scheduler",
    "SCMScheduler": "a continuous-time consistency-model scheduler",
    "FlowMatchLCMScheduler": "a flow-matching consistency-model scheduler",
    "CogVideoXDDIMScheduler": "an SNR-shifted (CogVideoX) scheduler",
    "CogVideoXDPMScheduler": "an SNR-shifted (CogVideoX) scheduler",
    "DDPMWuerstchenScheduler": "a Wuerstchen (continuous-time cosine) scheduler",
    "VQDiffusionScheduler": "a discrete (VQ-diffusion) scheduler",
    "AmusedScheduler": "a masked-token scheduler",
}
_DDPM_PREDICTIONS = ("epsilon", "v_prediction", "sample")
DEFAULT_CLASS = "DDPMScheduler"


@dataclass(frozen=True)
class ResolvedScheduler:
    """The training process a scheduler config describes: the schedule, what the network predicts, the class."""

    schedule: Any  # Schedule or FlowSchedule
    prediction_type: str
    class_name: str


def resolve_scheduler(settings: Mapping[str, Any], source: str) -> ResolvedScheduler:
    """Schedule and prediction type from a diffusers scheduler config; other processes are refused by class name.

    A config without ``_class_name`` (a bare betas description) is read as a DDPMScheduler.
    DDPM-family samplers configured for flow sigmas (``use_flow_sigmas`` or prediction_type
    "flow_prediction", as Sana's DPM-Solver and UniPC configs are) describe a flow-matching model.
    """
    where = f"scheduler config ({source})"
    class_name = settings.get("_class_name", DEFAULT_CLASS)
    if not isinstance(class_name, str):
        raise ModelLoadError(f"{where}: _class_name = {class_name!r:.60} must be a scheduler class name")
    check_schedule_steps(settings, where)
    if class_name in _REFUSED:
        raise ModelLoadError(f"{where}: {class_name} is {_REFUSED[class_name]}; qmia-fast scores DDPM-family "
                             "(betas) and flow-matching models only; pass --model-config with the scheduler the "
                             "model was trained with if this one is only its sampler")
    if class_name not in DDPM_SCHEDULERS and class_name not in FLOW_SCHEDULERS:
        raise ModelLoadError(f"{where}: scheduler class {class_name!r:.80} is not supported; use a DDPM-family "
                             f"scheduler ({', '.join(sorted(DDPM_SCHEDULERS)[:4])}, ...) or a flow-matching one "
                             f"({', '.join(sorted(FLOW_SCHEDULERS))})")
    prediction = settings.get("prediction_type")
    if class_name in FLOW_SCHEDULERS or settings.get("use_flow_sigmas") is True or prediction == "flow_prediction":
        return ResolvedScheduler(_flow_schedule(settings, class_name, where), "flow", class_name)
    if settings.get("timestep_type", "discrete") != "discrete":
        raise ModelLoadError(f"{where}: timestep_type = {settings.get('timestep_type')!r:.40} feeds the model "
                             "continuous (sigma-derived) timesteps; only discrete DDPM timesteps are supported")
    prediction = "epsilon" if prediction is None else prediction
    if not isinstance(prediction, str) or prediction not in _DDPM_PREDICTIONS:
        raise ModelLoadError(f"{where}: prediction_type = {prediction!r:.60} is not supported; "
                             f"expected one of {', '.join(_DDPM_PREDICTIONS)}")
    try:
        schedule = schedule_from_diffusers_config(settings)
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
        raise ModelLoadError(f"{where} is malformed ({type(exc).__name__}: {str(exc)[:120]})") from None
    return ResolvedScheduler(schedule, prediction, class_name)


def _flow_schedule(settings: Mapping[str, Any], class_name: str, where: str) -> FlowSchedule:
    # FlowMatch* schedulers call the shift "shift"; the DPM-Solver/UniPC flow configs "flow_shift".
    key = "shift" if class_name in FLOW_SCHEDULERS else "flow_shift"
    try:
        return FlowSchedule(settings.get("num_train_timesteps", 1000), settings.get(key, 1.0),
                            {"kind": "flow", "scheduler": class_name})
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
