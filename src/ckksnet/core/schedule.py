"""The schedule phase: everything about a run that can be decided before any key exists.

For the key set the preset implies (bootstrapping's rotation keys, plus the keys the plan asks
the client to add), :func:`schedule_plan`

1. tunes each kernel to those keys (each linear map's baby step: fewest key switches);
2. dry-runs the plan on the level-only tracer with the greedy bootstrapping policy, which finds
   where every bootstrap falls and each fresh ciphertext's slack (levels it never uses);
3. dry-runs it again following the resulting decisions from the lowered input, with the cost
   model, to record each step's levels in and out, bootstraps, key switches and estimated
   seconds;
4. (``optimise``) repeats 1-3 for each kernel variant the steps offer (a linear map with or
   without lanes: 2 levels and few products, or 1 level and more) and keeps the variants with
   the least estimated time (:func:`optimise_variants`).

The result is :class:`Scheduled`: the :class:`Schedule`, and the plan's steps as it ran them
(each kernel tuned to the keys, the chosen variants). Nothing here edits the plan: the compiler
installs both (``plan.schedule, plan.steps = schedule_plan(plan, ...)``); servers, clients and
the twin follow them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

from ckksnet.core.backend import Backend
from ckksnet.core.costs import cost_model
from ckksnet.core.encode import plan_type
from ckksnet.core.tiles import join
from ckksnet.core.tracer import INPUT, LevelTracer
from ckksnet.core.walker import GreedyRefresh, Refresh, RunReport, ScheduledRefresh, walk
from ckksnet.errors import CompileError, LevelError, MissingKeyError



@plan_type
@dataclass(frozen=True)
class StepSchedule:
    """One step as scheduled: levels left in and out, bootstraps it triggers, distinct rotation
    indices and key switches of its kernel, estimated seconds (bootstraps included), and per
    refresh call None (no bootstrap) or the level the bootstrapped value is lowered to."""

    name: str
    kind: str
    level_in: int
    level_out: int
    bootstraps: int
    rotations: int
    key_switches: int
    seconds: float
    refreshes: tuple = ()


@plan_type
@dataclass(frozen=True)
class Schedule:
    """``input_level``: levels the client encrypts with; ``key_rotations``: every rotation index
    (mod slots) whose key the plan assumes; ``client_rotations``: those the client generates
    beyond bootstrapping's; ``bootstrap_slots``: slot counts bootstrapping keys are needed for."""

    input_level: int
    key_rotations: tuple = ()
    client_rotations: tuple = ()
    bootstrap_slots: tuple = ()
    steps: tuple = ()
    cost_source: str = ""
    memory: dict = field(default_factory=dict)

    @property
    def bootstraps(self) -> int:
        return sum(s.bootstraps for s in self.steps)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def key_switches(self) -> int:
        return sum(s.key_switches for s in self.steps)

    def decisions(self) -> list:
        """Every refresh decision in run order (what :class:`ScheduledRefresh` follows)."""
        return [d for s in self.steps for d in s.refreshes]


class Scheduled(NamedTuple):
    """What scheduling decided: the :class:`Schedule`, and the plan's ``steps`` as it ran them
    ((kernel, input ids, output id), each kernel tuned to the key set, the chosen variants). The
    schedule describes those steps, not the plan's old ones: the caller installs both."""

    schedule: Schedule
    steps: list


def schedule_plan(plan, backend: Backend, optimise: bool = True) -> Scheduled:
    """Tune ``plan``'s kernels to its key set and fix its schedule (see the module doc); with
    ``optimise``, first pick each kernel's variant by :func:`optimise_variants`. ``backend``:
    the plan's backend (:mod:`ckksnet.core.backend`): the rotation keys its bootstrapping key
    generation makes anyway, and its measured cost constants (:mod:`ckksnet.core.costs`), which
    estimate the seconds. Returns :class:`Scheduled` (the schedule and the tuned steps); ``plan``
    is left as it was. Raises :class:`CompileError` if the plan needs more levels than the
    preset gives."""
    tuner = _Tuner(backend.bootstrap_rotations(plan.preset), backend.name)
    first = _schedule(plan, plan.steps, tuner)
    return optimise_variants(plan, first.schedule, tuner, first.steps) if optimise else first


def optimise_variants(plan, schedule: "Schedule", tuner=None, steps: list | None = None) -> Scheduled:
    """Bootstrap placement over kernel variants, at compile time: coordinate descent that offers
    each step its :meth:`~ckksnet.kernels.base.Kernel.variants` (a linear map in lanes spends 2
    levels for a quarter of the products, without lanes 1 level), schedules the whole plan with
    each (greedy placement on the level tracer, every bootstrap's output lowered to the levels
    its segment uses, each kernel costed at its level by the cost model) and keeps a variant
    when the estimated seconds drop, until a pass changes nothing (at most 3 passes).

    Why not only the greedy placement: with 6 usable levels per bootstrap a convolution in lanes
    pushes the next ReLU's first component past a bootstrap boundary (3 bootstraps per pair
    instead of 2); whether the extra products of a lane-free map cost less than that bootstrap
    depends on the stage, which only the cost model knows. Without a cost model (presets with no
    measured constants) the objective is the bootstrap count. ``steps``: the steps ``schedule``
    ran (default: the plan's). Returns :class:`Scheduled`: the best schedule and the steps it
    ran; ``plan`` is left as it was."""
    tuner = tuner or _Tuner(_bootstrap_keys_of(schedule), plan.backend)
    best = Scheduled(schedule, list(plan.steps if steps is None else steps))
    for _ in range(3):
        improved = False
        for i in range(len(best.steps)):
            step, ins, out = best.steps[i]
            for alt in step.variants():
                trial = list(best.steps)
                trial[i] = (alt, ins, out)
                try:
                    cand = _schedule(plan, trial, tuner)
                except (CompileError, LevelError, MissingKeyError):  # the variant cannot run: keep the rest
                    cand = None
                if cand is not None and _objective(cand.schedule) < _objective(best.schedule):
                    best, improved = cand, True
                    break
        if not improved:
            break
    return best


def _objective(schedule: "Schedule") -> tuple:
    # seconds rounded to 0.1 s: a variant must pay measurably, not by float noise
    return (round(schedule.seconds, 1), schedule.bootstraps) if schedule.cost_source else (schedule.bootstraps,)


def _bootstrap_keys_of(schedule: "Schedule") -> frozenset:
    """The bootstrapping keys a schedule assumed: its keys less the client's own."""
    return frozenset(schedule.key_rotations) - frozenset(schedule.client_rotations)


class _Tuner:
    """step.tuned(keys), remembered per (step, keys): the optimiser schedules a plan many times.
    Carries what every schedule of the plan shares: the bootstrapping keys and the backend."""

    def __init__(self, bootstrap_keys: frozenset, backend: str):
        self.bootstrap_keys, self.backend = bootstrap_keys, backend
        self._done: dict = {}

    def __call__(self, step, keys: frozenset):
        hit = self._done.get((id(step), keys))
        if hit is not None and hit[0] is step:
            return hit[1]
        tuned = step.tuned(keys)
        self._done[(id(step), keys)] = (step, tuned)
        self._done[(id(tuned), keys)] = (tuned, tuned)
        return tuned


def _schedule(plan, plan_steps: list, tuner: "_Tuner") -> Scheduled:
    """Schedule ``plan`` with ``plan_steps`` in place of its own (on a copy: ``plan`` is not edited)."""
    plan = replace(plan, steps=list(plan_steps))
    preset = plan.preset
    boot_keys = tuner.bootstrap_keys if preset.bootstrap else frozenset()
    extra = plan.key_indices(boot_keys)
    keys = frozenset(boot_keys) | frozenset(extra)
    plan.steps = [(tuner(step, keys), ins, out) for step, ins, out in plan.steps]

    tracer = LevelTracer(preset, keys)
    greedy = GreedyRefresh(tracer)
    _dry_run(plan, tracer, preset.depth, greedy, walk)
    if boot_keys and not greedy.count:  # never bootstraps: no bootstrapping keys to chain rotations from
        extra = plan.key_indices(frozenset())
        keys = frozenset(extra)
        plan.steps = [(tuner(step, keys), ins, out) for step, ins, out in plan.steps]
        tracer = LevelTracer(preset, keys)
        greedy = GreedyRefresh(tracer)
        _dry_run(plan, tracer, preset.depth, greedy, walk)
    slack = [tracer.slack_of(b) for b in range(greedy.count)]
    boots = iter(range(greedy.count))
    # a call that bootstrapped k ciphertexts (one value's tiles) lowers them all alike: by their least slack
    decisions = [preset.levels_after_bootstrap - min(slack[next(boots)] for _ in range(k)) if k else None
                 for k in greedy.decisions]
    input_level = preset.depth - tracer.slack_of(INPUT)

    costs = cost_model(preset.name, tuner.backend)
    tracer = LevelTracer(preset, keys, costs)
    refresh = ScheduledRefresh(tracer, decisions)
    report, seconds = RunReport(), []
    calls = []
    walk(plan, tracer, _fresh_input(plan, tracer, input_level), refresh, report,
         on_step=lambda i, n, name: (seconds.append(tracer.seconds), calls.append(refresh.calls)))
    seconds.append(tracer.seconds)
    calls.append(refresh.calls)
    steps = tuple(StepSchedule(r.name, r.kind, r.level_in, r.level_out, r.bootstraps, r.rotations,
                               r.key_switches, round(seconds[i + 1] - seconds[i], 4),
                               tuple(decisions[calls[i]:calls[i + 1]]))
                  for i, r in enumerate(report.steps))
    return Scheduled(Schedule(input_level, tuple(sorted(keys)), tuple(sorted(extra)),
                              (preset.slots,) if preset.bootstrap and greedy.count else (),
                              steps, costs.source if costs else "", dict(costs.memory) if costs else {}),
                     plan.steps)


def _fresh_input(plan, tracer, levels: int):
    """The client's input as the tracer sees it: one traced ciphertext per tile of its layout."""
    return join([tracer.fresh(levels) for _ in range(getattr(plan.input_layout, "ciphertexts", 1))])


def _dry_run(plan, tracer, levels: int, refresh, walk) -> None:
    try:
        walk(plan, tracer, _fresh_input(plan, tracer, levels), refresh)
    except (MissingKeyError, LevelError) as exc:
        if not plan.preset.bootstrap:
            raise CompileError(f"the plan needs {levels_needed(plan)} levels; preset {plan.preset.name!r} offers "
                               f"{plan.preset.depth} and has no bootstrapping") from exc
        if isinstance(exc, MissingKeyError):
            raise CompileError(f"the plan cannot be scheduled: {exc}") from exc
        raise CompileError(f"the plan cannot be scheduled with preset {plan.preset.name!r} "
                           f"(depth {plan.preset.depth}, {plan.preset.levels_after_bootstrap} levels after "
                           f"a bootstrap): {exc}") from exc


def levels_needed(plan) -> int:
    """Levels the plan spends from input to output without bootstrapping: a dry run with
    unlimited levels, every rotation one key switch."""
    class _Never(Refresh):
        def __call__(self, ct, levels: int):
            self.ev.require_levels(ct, levels, "a stage")
            return ct

    unlimited = 1 << 20
    tracer = LevelTracer(plan.preset)
    walk(plan, tracer, _fresh_input(plan, tracer, unlimited), _Never(tracer))
    return unlimited - tracer.slack_of(INPUT)


def estimate_seconds(plan, costs) -> float:
    """The plan's estimated run time (seconds) under another cost model (e.g. constants measured
    in the same process as a run, for a like-for-like comparison)."""
    tracer = LevelTracer(plan.preset, plan.schedule.key_rotations, costs)
    walk(plan, tracer, _fresh_input(plan, tracer, plan.schedule.input_level),
         ScheduledRefresh(tracer, plan.schedule.decisions()))
    return tracer.seconds
