"""Ray or this process: which runs a batch, and why (``use_ray``, ``ckksnet run --use-ray``).

A local Ray run pays a start-up before its first image and a shut-down after its last
(:data:`RAY_START_SECONDS`); one worker is no faster than this process. So ``auto`` starts Ray
only when its workers, running side by side, finish sooner than this process alone would, by
the plan's estimated seconds per image; ``always`` and ``never`` force the choice. Joining a
cluster (``--ray ADDRESS``, ``$RAY_ADDRESS``) or a Ray this process is already connected to has
no start-up to pay, and uses Ray.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import dataclass

from ckksnet.core.threads import affinity_cores
from ckksnet.errors import CkksnetError

USE_RAY = ("auto", "always", "never")

#: seconds a local Ray run spends before its first image and after its last beyond what this
#: process spends: ray.init and a worker process importing ckksnet 5.7 s, shut-down 1.3 s
#: (measured on 2 cores at a load of 2, test preset, 2026-12-07; the key load is the same either way)
RAY_START_SECONDS = 7.0


class RunnerOptionError(CkksnetError, ValueError):
    """``use_ray`` (``--use-ray``) is unknown or contradicts the other options."""


@dataclass(frozen=True)
class Runner:
    """Where a batch runs: ``ray`` (Ray workers) or not (this process), and why."""

    ray: bool
    reason: str

    @property
    def name(self) -> str:
        return "ray" if self.ray else "in-process"


def check_use_ray(use_ray: str, workers: int, address: str | None) -> None:
    """Refuse an unknown ``use_ray`` and ``never`` with what only Ray can do (before any work)."""
    if use_ray not in USE_RAY:
        raise RunnerOptionError(f"use_ray (--use-ray) must be one of {', '.join(USE_RAY)}, got {use_ray!r}")
    if use_ray == "never" and address:
        raise RunnerOptionError(f"--ray {address} joins a Ray cluster, --use-ray never forbids Ray: drop one")
    if use_ray == "never" and workers > 1:
        raise RunnerOptionError(f"--workers {workers} needs Ray (this process is one worker): drop --use-ray "
                                "never, or --workers")


def choose_runner(use_ray: str, images: int, workers: int, worker_cpus: int, address: str | None,
                  seconds_per_image: float | None) -> Runner:
    """Where ``images`` images run (module docstring); ``seconds_per_image``: the plan's
    estimate (None or 0 when its preset has no cost model)."""
    check_use_ray(use_ray, workers, address)
    if use_ray != "auto":
        return Runner(use_ray == "always", f"--use-ray {use_ray}")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return Runner(True, f"joining the Ray cluster at {address}")
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return Runner(True, "this process is connected to Ray already (no start-up to pay)")
    if importlib.util.find_spec("ray") is None:
        return Runner(False, "Ray is not installed (pip install 'ckksnet[ray]')")
    return by_estimate(images, workers, worker_cpus, seconds_per_image)


def by_estimate(images: int, workers: int, worker_cpus: int, seconds: float | None) -> Runner:
    """Ray when ``workers`` side by side beat this process by more than Ray's start-up."""
    cores = affinity_cores()
    lanes = min(workers, images, max(cores // worker_cpus, 1))
    if lanes <= 1:
        why = ("1 worker (--workers)" if workers <= 1 else f"{images} image" if images <= 1
               else f"{cores} core(s) hold 1 worker of {worker_cpus} CPU(s)")
        return Runner(False, f"{why}: Ray would add ~{RAY_START_SECONDS:.0f} s of start-up and run no faster")
    if not seconds:
        return Runner(False, "no time estimate for this plan's preset (--use-ray always to use Ray)")
    here = images * seconds
    there = RAY_START_SECONDS + math.ceil(images / lanes) * seconds
    figures = (f"{images} images x ~{seconds:.1f} s (the plan's estimate): ~{here:.0f} s in this process, "
               f"~{there:.0f} s over {lanes} Ray workers with Ray's ~{RAY_START_SECONDS:.0f} s start-up")
    return Runner(there < here, figures)

