"""The compile-time optimiser over kernel variants (issue #20, lever 3): a linear map in lanes
spends 2 levels for a fraction of the products, without lanes 1 level; the optimiser schedules
the whole plan with each choice and keeps the cheaper one.

Checked at the test preset on a reduced ResNet, encrypted: the optimised placement never runs a
kernel short of levels (a real run and the twin both check every level), its bootstrap count is
the one the dry run predicts, and its logits equal those of the lanes-everywhere plan within
CKKS noise. At the secure preset (compile only, no keys) it is checked to save bootstraps where
lanes push a ReLU component past a bootstrap boundary."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.compiler import compile
from ckksnet.core.schedule import optimise_variants
from ckksnet.runtime import Client, Server
from tests.test_compiler import IMAGES, _check_schedule_predicts, _tiny_resnet


def _laned(plan) -> list[str]:
    return [s.name for s, _, _ in plan.steps if s.kind == "linear" and getattr(s.kernel, "lanes", 1) > 1]


@pytest.fixture(scope="module")
def plans():
    """(every map in lanes, the same plan after the optimiser)."""
    model = _tiny_resnet()
    kw = dict(calibration=IMAGES, preset="test", image_size=(8, 8), lanes=True)
    laned = compile(model, **kw)
    optimised = compile(model, **kw)
    optimised.schedule, optimised.steps = optimise_variants(optimised, optimised.schedule)
    return model, laned, optimised


def test_the_optimiser_keeps_only_variants_that_lower_the_estimate(plans):
    _, laned, optimised = plans
    assert _laned(laned) and len(_laned(optimised)) < len(_laned(laned))
    assert optimised.schedule.seconds < laned.schedule.seconds
    assert optimised.schedule.bootstraps <= laned.schedule.bootstraps
    # the steps the schedule describes are the ones the plan now holds
    assert [s.name for s in optimised.schedule.steps] == [s.name for s, _, _ in optimised.steps]
    assert sum(s.level_in - s.level_out for s in optimised.schedule.steps if s.kind == "linear" and not s.bootstraps) \
        < sum(s.level_in - s.level_out for s in laned.schedule.steps if s.kind == "linear" and not s.bootstraps)


def test_optimised_placement_runs_encrypted_like_the_lanes_plan(plans):
    _, laned, optimised = plans
    outs = {}
    for name, plan in (("laned", laned), ("optimised", optimised)):
        client = Client(plan)
        server = Server(plan, client.evaluation_keys())
        # a real run checks every kernel's levels (LevelError if one were short)
        outs[name] = client.decrypt(server.run(client.encrypt(IMAGES[0])))
        _check_schedule_predicts(plan, server.report)  # levels, bootstraps, key switches as planned
        twin = plan.twin(IMAGES[:1])[0]  # the twin follows the schedule with the same level checks
        assert np.max(np.abs(outs[name] - twin)) < 1e-5
    assert np.max(np.abs(outs["optimised"] - outs["laned"])) < 1e-5  # CKKS noise only


def test_explicit_lanes_choice_is_not_overridden():
    model = _tiny_resnet()
    plan = compile(model, calibration=IMAGES, preset="test", image_size=(8, 8), lanes=True)
    assert _laned(plan)  # lanes=True: every map that can be in lanes is


def test_secure_resnet20_with_a_shallow_relu_needs_two_bootstraps_per_pair():
    """Compile only (no keys): ResNet-20 with the depth-10 sign (alpha 10, eps 2^-7). In lanes a
    stage-2/3 convolution spends 2 of the 6 usable levels, so conv + first component (1 + 5)
    no longer fits and every such pair costs 3 bootstraps; the optimiser takes those maps out of
    lanes (47 -> 36 bootstraps when this was written)."""
    from ckksnet.models import load_bundled

    model, meta = load_bundled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        kw = dict(calibration=meta["calibration"]["relus"], preset="secure", alpha=10, eps_bits=7)
        greedy = compile(model, lanes=True, **kw)
        best = compile(model, **kw)
    assert greedy.schedule.bootstraps > best.schedule.bootstraps == 2 * 18
    assert best.schedule.seconds < greedy.schedule.seconds
    assert all(s.bootstraps <= 1 for s in best.schedule.steps if s.kind == "relu" and s.name != "relu")
    # alpha 13 (shipped): lanes cost no bootstrap there (2 + 4 of 6 levels), so they are kept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        shipped = compile(model, calibration=kw["calibration"], preset="secure")
    assert shipped.schedule.bootstraps == 54 and len(_laned(shipped)) == 11  # all 11 the kernels put in lanes
