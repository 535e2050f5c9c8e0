"""Quantile regressors of log-scores on images: settings, inputs, the grouped residual CNN, training, the fitted bag, selection and conformal calibration."""
from __future__ import annotations

from ..seeds import derive_seed
from . import calibration, selection
from .bag import QuantileBag, TrainHistory
from .config import RegressorConfig, check_levels
from .fit import (SamplePlan, bootstrap_plans, default_batched, fit_bag, full_data_plans, holdout_plan,
                  pinball_loss)
from .inputs import ChannelScaler, as_aux_tensor, as_image_tensor
from .network import BaggedResNet, auto_stem_stride, count_parameters, stack_models

__all__ = [
    "calibration", "selection", "RegressorConfig", "check_levels", "ChannelScaler", "as_image_tensor", "as_aux_tensor", "BaggedResNet",
    "auto_stem_stride", "count_parameters", "stack_models", "pinball_loss", "SamplePlan", "bootstrap_plans",
    "holdout_plan", "full_data_plans", "derive_seed", "fit_bag", "default_batched", "QuantileBag", "TrainHistory",
]
