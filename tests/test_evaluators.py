"""The evaluator interface: CkksServer (OpenFHE), LevelTracer (levels only) and SlotEvaluator
(numpy slots) offer the same methods, and one computation written against the interface spends
the same levels on all three and gives the same values encrypted and on numpy slots."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from ckksnet.backend import CkksServer
from ckksnet.core.evaluator import METHODS, Evaluator
from ckksnet.core.slots import SlotEvaluator, SlotVector
from ckksnet.core.tracer import LevelTracer, TracedCt
from ckksnet.errors import LevelError

EVALUATORS = (CkksServer, LevelTracer, SlotEvaluator)
FRESH = 12  # levels of the inputs: fewer than the preset's depth, as a scheduled input is
ROTATIONS = [0, 1, 5, -1, 3, 7, -6]  # 3, 7 and -6 are composed from the keys present (conftest: 1, 2, 5, -1)


@pytest.mark.parametrize("cls", EVALUATORS, ids=lambda c: c.__name__)
def test_every_evaluator_offers_every_method(cls):
    assert set(METHODS) == {n for n, v in vars(Evaluator).items() if callable(v) and not n.startswith("_")}
    for name in METHODS:
        method = getattr(cls, name, None)
        assert callable(method), f"{cls.__name__} lacks {name}"
        # same parameters, same names: kernels call them positionally and by keyword
        assert list(inspect.signature(method).parameters) == list(inspect.signature(getattr(Evaluator, name)).parameters), \
            f"{cls.__name__}.{name} differs from the interface"


def test_instances_satisfy_the_protocol(server):
    tracer = LevelTracer(server.preset, server.rotations)
    slots = SlotEvaluator(server.slots, server.preset.levels_after_bootstrap)
    for ev in (server, tracer, slots):
        assert isinstance(ev, Evaluator)
        assert ev.slots == server.slots and set(ev.key_switches) == {"rotations", "relinearizations"}


def _computation(ev, x, y, vec, vec2) -> list[tuple[str, object]]:
    """Every method of the interface once or more: (stage name, value) in order."""
    stages = []

    def keep(name, value):
        stages.append((name, value))
        return value

    a = keep("add", ev.add(x, y))
    b = keep("sub vector", ev.sub(a, vec))
    b = keep("add scalar", ev.add(b, 0.125))
    c = keep("mul vector", ev.mul(b, vec))
    d = keep("mul scalar", ev.mul(c, 0.5))
    e = keep("mul ciphertext", ev.mul(d, x))  # operands at different levels: the lower one counts
    lazy = keep("mul_lazy sum", ev.add(ev.mul_lazy(e, e), ev.mul_lazy(d, d)))
    f = keep("relinearize", ev.relinearize(lazy))
    g = keep("rescale", ev.rescale(f))
    h = keep("dot", ev.dot([(g, vec), (e, vec2)]))
    rotated = ev.rotate_composed(h, ROTATIONS)
    assert list(rotated) == ROTATIONS
    i = keep("rotate_composed + add_many", ev.add_many([rotated[k] for k in ROTATIONS]))
    j = keep("sub ciphertext", ev.sub(i, h))
    k = keep("add_inplace", ev.add_inplace(ev.mul(j, 0.25), x))
    m = keep("drop_levels", ev.drop_levels(k, ev.levels_left(k) - 3))
    n = keep("bootstrap", ev.bootstrap(m))
    keep("after bootstrap", ev.mul(n, n))
    return stages


def test_one_computation_on_all_three(client, server):
    rng = np.random.default_rng(11)
    slots = server.slots
    x, y, vec, vec2 = (rng.uniform(-0.5, 0.5, slots) for _ in range(4))
    preset = server.preset

    numpy_ev = SlotEvaluator(slots, preset.levels_after_bootstrap, fast=False)
    tracer = LevelTracer(preset, server.rotations)
    before = dict(server.key_switches)
    runs = {
        "ckks": _computation(server, client.encrypt(x, FRESH), client.encrypt(y, FRESH), vec, vec2),
        "tracer": _computation(tracer, tracer.fresh(FRESH), tracer.fresh(FRESH), vec, vec2),
        "numpy": _computation(numpy_ev, numpy_ev.fresh(x, FRESH), numpy_ev.fresh(y, FRESH), vec, vec2),
    }
    evs = {"ckks": server, "tracer": tracer, "numpy": numpy_ev}
    assert isinstance(runs["tracer"][0][1], TracedCt) and isinstance(runs["numpy"][0][1], SlotVector)
    levels = {name: [(stage, evs[name].levels_left(v)) for stage, v in run] for name, run in runs.items()}
    assert levels["ckks"] == levels["tracer"] == levels["numpy"]
    got = dict(levels["ckks"])
    assert got["add"] == FRESH and got["mul ciphertext"] == FRESH - 3 and got["mul_lazy sum"] == FRESH - 4
    assert got["bootstrap"] == preset.levels_after_bootstrap and got["after bootstrap"] == preset.levels_after_bootstrap - 1

    # values: the decrypted ciphertexts are the numpy slots plus CKKS noise. Measured: at most
    # 1.3e-13 before the bootstrap, 6.6e-8 after it; the bounds leave a 15x margin or more
    boot = [s for s, _ in runs["ckks"]].index("bootstrap")
    for idx, ((stage, ct), (_, ref)) in enumerate(zip(runs["ckks"], runs["numpy"])):
        err = np.max(np.abs(client.decrypt(ct) - ref.data))
        assert err < (1e-6 if idx >= boot else 1e-11), f"{stage}: {err:.3g}"

    # key switches the kernels' operations made (bootstrapping's own are not counted): the
    # tracer chains rotations from the keys present exactly as the server does; numpy slots
    # count one per rotation index asked for, and the same relinearizations
    made = {k: server.key_switches[k] - before[k] for k in before}
    assert made == tracer.key_switches
    assert made["relinearizations"] == numpy_ev.key_switches["relinearizations"] == 3
    assert numpy_ev.key_switches["rotations"] == len([k for k in ROTATIONS if k % slots])
    assert made["rotations"] >= numpy_ev.key_switches["rotations"]
    assert numpy_ev.bootstraps == tracer.bootstraps == 1


def test_level_errors_are_the_same_on_all_three(client, server):
    tracer = LevelTracer(server.preset, server.rotations)
    numpy_ev = SlotEvaluator(server.slots, server.preset.levels_after_bootstrap)
    x = np.full(server.slots, 0.25)
    values = [(server, client.encrypt(x, 1)), (tracer, tracer.fresh(1)), (numpy_ev, numpy_ev.fresh(x, 1))]
    for ev, ct in values:
        ev.require_levels(ct, 1)
        with pytest.raises(LevelError):
            ev.require_levels(ct, 2)
        with pytest.raises(LevelError):
            ev.drop_levels(ct, 2)  # levels are never raised
        spent = ev.mul(ct, 0.5)
        assert ev.levels_left(spent) == 0
        for op in (lambda: ev.mul(spent, 0.5), lambda: ev.bootstrap(spent), lambda: ev.mul_lazy(spent, spent)):
            with pytest.raises(LevelError):
                op()


# ---------------------------------------------------------------- the conformance suite
def _registered():
    """Every evaluator a backend registered, the example backend of examples/backend_contract.py
    included (importing it registers it)."""
    import importlib.util
    from pathlib import Path

    import ckksnet.backend  # noqa: F401  (registers "openfhe")
    from ckksnet.core.evaluator import EVALUATORS

    path = Path(__file__).resolve().parents[1] / "examples" / "backend_contract.py"
    spec = importlib.util.spec_from_file_location("backend_contract", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return EVALUATORS


@pytest.mark.parametrize("name", sorted(_registered()))
def test_every_registered_evaluator_passes_the_conformance_suite(name):
    """One computation over every interface method: the same levels as the level tracer at every
    stage, values within the evaluator's declared tolerance of exact numpy slots, the same
    relinearizations, the protocol's methods with the interface's parameters."""
    import warnings

    from ckksnet.core.preset import InsecurePresetWarning, get_preset
    from ckksnet.core.evaluator import EVALUATORS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        preset = get_preset("test")
    keys = [1, 2, 5, -1]
    harness = EVALUATORS[name](preset, keys)
    ev = harness.evaluator
    assert isinstance(ev, Evaluator) and ev.slots == preset.slots
    for method in METHODS:
        assert list(inspect.signature(getattr(type(ev), method)).parameters) == \
            list(inspect.signature(getattr(Evaluator, method)).parameters), f"{name}.{method}"
    rng = np.random.default_rng(5)
    x, y, vec, vec2 = (rng.uniform(-0.5, 0.5, preset.slots) for _ in range(4))
    exact = EVALUATORS["numpy-slots"](preset, keys)
    ref = _computation(exact.evaluator, exact.encode(x, FRESH), exact.encode(y, FRESH), vec, vec2)
    tracer = LevelTracer(preset, keys)
    traced = _computation(tracer, tracer.fresh(FRESH), tracer.fresh(FRESH), vec, vec2)
    got = _computation(ev, harness.encode(x, FRESH), harness.encode(y, FRESH), vec, vec2)
    assert [(s, ev.levels_left(v)) for s, v in got] == [(s, tracer.levels_left(v)) for s, v in traced]
    assert ev.key_switches["relinearizations"] == 3
    if harness.decode is not None:
        boot = [s for s, _ in got].index("bootstrap")
        for idx, ((stage, value), (_, want)) in enumerate(zip(got, ref)):
            err = np.max(np.abs(harness.decode(value) - want.data))
            assert err <= harness.tolerance[idx >= boot], f"{name} {stage}: {err:.3g}"


def test_the_backend_example_runs_a_compiled_plan():
    """examples/backend_contract.py: ckksnet.runtime.Server runs a compiled CNN on the toy backend,
    and its logits match torch (the script exits 1 otherwise)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "backend_contract.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "toy backend:" in out.stdout and "prediction" in out.stdout
