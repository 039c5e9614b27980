"""dpddpm: ELBO-optimal step schedules for pretrained DDPMs by dynamic programming (Watson et al., 2021)."""

from ._version import __version__ as __version__  # set in _version.py only
from .analytic import AnalyticVariances, analytic_costs, fit_analytic_variances, with_analytic_variances
from .checkpoint import cost_matrix, cost_matrix_resumable
from .costmatrix import CostMatrix
from .costs import CostRun
from .digits import PRETRAINED, digits_split, load_pretrained, model_card
from .dp import OptimalSchedules, optimal_schedules, schedule_bpd, schedule_terms
from .evaluate import ELBOEstimate, elbo, in_sample_elbo
from .external import (
    PRESETS as IMPROVED_DIFFUSION_PRESETS,
)
from .external import (
    CheckpointMismatchError,
    UNetModel,
    build_improved_diffusion_unet,
    diffusers_scheduler_config,
    load_diffusers,
    load_images,
    load_improved_diffusion,
    to_diffusers_timesteps,
)
from .merge import merge as merge_costs
from .model import DDPM
from .reproduce import ReproduceOptions, ReproduceResults, reproduce
from .runinfo import RunInfo
from .sampling import ddim_sample, sample
from .schedule import NoiseSchedule
from .strides import ddim_schedule, even_schedule, quadratic_schedule
from .terms import edge_bpd, prior_bpd

__all__ = [
    "CostMatrix",
    "DDPM",
    "ELBOEstimate",
    "NoiseSchedule",
    "OptimalSchedules",
    "cost_matrix",
    "merge_costs",
    "ddim_sample",
    "edge_bpd",
    "elbo",
    "even_schedule",
    "optimal_schedules",
    "prior_bpd",
    "quadratic_schedule",
    "sample",
    "schedule_bpd",
    "schedule_terms",
    "in_sample_elbo",
    "IMPROVED_DIFFUSION_PRESETS",
    "CheckpointMismatchError",
    "build_improved_diffusion_unet",
    "load_diffusers",
    "load_improved_diffusion",
    "UNetModel",
    "to_diffusers_timesteps",
    "diffusers_scheduler_config",
    "load_images",
    "digits_split",
    "PRETRAINED",
    "load_pretrained",
    "model_card",
    "reproduce",
    "ReproduceOptions",
    "ReproduceResults",
    "ddim_schedule",
    "RunInfo",
    "CostRun",
    "cost_matrix_resumable",
    "AnalyticVariances",
    "analytic_costs",
    "fit_analytic_variances",
    "with_analytic_variances",
]
