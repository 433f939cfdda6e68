"""The fidelity report's arithmetic, its resume, and the noise model, on a tiny network at the
insecure test preset."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from ckksnet.core.preset import InsecurePresetWarning
from ckksnet.compiler import compile
from ckksnet.errors import DataError
from ckksnet.fidelity import EncryptedLog, NoiseModel, NoiseProbe, encrypted_sample, evaluate, summarize
from ckksnet.runtime import Client, Server
from tests.test_compiler import IMAGES, _tiny_resnet

LABELS = np.random.default_rng(5).integers(0, 10, len(IMAGES))


def test_summarize_counts_by_hand():
    plain = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    other = np.array([[0.9, 0.0], [0.6, 0.5], [1.0, 0.1], [0.0, 1.2]])
    labels = np.array([0, 1, 1, 1])
    s = summarize(plain, other, labels)
    assert s["identical_top1"] == 75.0  # image 1 flips
    assert s["accuracy"] == 50.0 and s["plain_accuracy"] == 75.0
    assert s["max_logit_error"] == pytest.approx(0.6) and s["diverged_images"] == 0
    other[3, 1] = np.inf  # a diverged polynomial: counted apart, the max stays over finite logits
    s = summarize(plain, other, labels)
    assert s["diverged_images"] == 1 and s["max_logit_error"] == pytest.approx(0.6)
    assert s["identical_top1"] == 75.0
    with pytest.raises(ValueError):
        summarize(plain, other[:3], labels)


@pytest.fixture(scope="module")
def tiny():
    model = _tiny_resnet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePresetWarning)
        plan = compile(model, calibration=IMAGES, preset="test", image_size=(8, 8))
        client = Client(plan)
    return model, plan, client


def test_fidelity_report_and_resume(tiny, tmp_path):
    model, plan, client = tiny
    made = []

    def factory(p):  # reuse the module's keys; count how often keys would be made
        made.append(1)
        return client

    state = tmp_path / "enc.jsonl"
    first = evaluate(plan, model, IMAGES, LABELS, twin=40, encrypted=1, state=state, progress=False,
                     client_factory=factory)
    with torch.no_grad():
        x = torch.from_numpy(IMAGES[:40]).permute(0, 3, 1, 2).float() / 255
        plain = model(x).double().numpy()
    twin = plan.twin(IMAGES[:40])
    assert first["twin"]["identical_top1"] == pytest.approx(100 * np.mean(twin.argmax(1) == plain.argmax(1)))
    assert first["plain"]["accuracy"] == pytest.approx(100 * np.mean(plain.argmax(1) == LABELS[:40]), abs=1e-3)
    assert first["twin"]["accuracy"] == pytest.approx(100 * np.mean(twin.argmax(1) == LABELS[:40]), abs=1e-3)
    assert first["encrypted"]["images"] == 1 and len(made) == 1
    # encrypted logits are twin logits plus CKKS noise, so identical predictions here
    assert first["encrypted"]["identical_top1"] == 100.0
    assert first["encrypted"]["max_logit_error"] <= first["twin_on_encrypted_images"]["max_logit_error"] + 1e-5
    lines = state.read_text().splitlines()
    assert len(lines) == 2 and "identity" in json.loads(lines[0])

    # resume: the finished image is not run again, one more is
    second = evaluate(plan, model, IMAGES, LABELS, twin=0, encrypted=2, state=state, progress=False,
                      client_factory=factory)
    assert second["encrypted"]["images"] == 2 and len(made) == 2
    assert second["encrypted"]["indices"][:1] == first["encrypted"]["indices"]  # the sample grows by a prefix
    assert len(state.read_text().splitlines()) == 3
    assert second["encrypted"]["identical_top1"] == 100.0
    # the profile is the newest record's (the newest code), not the sample's first
    newest = second["encrypted"]["indices"][1]
    assert first["profile"]["image"] == first["encrypted"]["indices"][0] and second["profile"]["image"] == newest
    assert second["profile"]["bootstraps"] == json.loads(state.read_text().splitlines()[-1])["bootstraps"]
    # rotation-key memory: every automorphism key present (bootstrapping's and the kernels'),
    # each the size of the serialized relinearization key
    keys = second["profile"]["key_memory_gb"]
    one = client.keys.key_switching_key_bytes() / 2**30
    assert keys["automorphism_keys_present"] == len(client.keys.cc.GetExistingEvalAutomorphismKeyIndices(client.keys.key_tag))
    assert keys["automorphism_keys_present"] >= len(client.keys.rotations) > 0
    assert keys["automorphism_keys"] == pytest.approx(keys["automorphism_keys_present"] * one, abs=0.01)
    again = evaluate(plan, model, IMAGES, LABELS, twin=0, encrypted=2, state=state, progress=False,
                     client_factory=factory)
    assert len(made) == 2 and again["encrypted"] == second["encrypted"]  # nothing left: no keys made


def test_state_of_another_run_is_refused(tmp_path):
    path = tmp_path / "s.jsonl"
    EncryptedLog(path, {"preset": "test", "steps": 3})
    with pytest.raises(DataError, match="another run"):
        EncryptedLog(path, {"preset": "test", "steps": 4})


def test_a_state_of_another_run_is_refused_before_the_twin_and_ignored_without_encrypted_images(tiny, tmp_path):
    """The record of encrypted images is checked first (once it was checked after 20 minutes of
    twin, which were lost); a twin-only run neither reads nor writes it."""
    model, plan, _ = tiny
    path = tmp_path / "s.jsonl"
    EncryptedLog(path, {"preset": "test", "steps": 1})
    calls = []
    twin = plan.twin
    plan.twin = lambda *a, **k: calls.append(1) or twin(*a, **k)
    try:
        with pytest.raises(DataError, match="another run"):
            evaluate(plan, model, IMAGES, LABELS, twin=8, encrypted=1, state=path, progress=False)
        assert not calls
        report = evaluate(plan, model, IMAGES, LABELS, twin=8, encrypted=0, state=path, progress=False)
    finally:
        del plan.twin
    assert report["twin"]["images"] == 8 and calls
    assert len(path.read_text().splitlines()) == 1  # untouched


def test_noise_probe_and_noisy_twin(tiny, tmp_path):
    model, plan, client = tiny
    server = Server(plan, client.evaluation_keys())
    probe = NoiseProbe(plan, client)
    logits = client.decrypt(server.run(client.encrypt(IMAGES[0]), probe=probe))
    noise = probe.model("test", "unit test")
    assert set(noise.steps) == {s.name for s, _, _ in plan.steps}
    assert all(0 <= v < 1e-4 for v in noise.steps.values())
    assert max(noise.steps.values()) > 0  # bootstrapping and rescaling leave some error
    # the noisy twin strays from the exact twin by about what the encrypted run does
    exact = plan.twin(IMAGES[:1])[0]
    enc_err = np.max(np.abs(logits - exact))
    noisy = NoiseModel.load(noise.save(tmp_path / "n.json"))
    twin_err = np.max(np.abs(plan.twin(IMAGES[:1], noise=noisy, seed=1)[0] - exact))
    assert 0 < twin_err and 0.05 < twin_err / enc_err < 20
    with pytest.raises(DataError):
        NoiseModel.load(tmp_path / "missing.json")


def test_noise_model_perturbs_only_used_slots_and_scales_by_its_factor():
    x = np.zeros((2000, 8))
    used = np.array([1, 4, 6])
    model = NoiseModel("test", {"step": 0.5})
    out = model.perturb("step", x, np.random.default_rng(0), used)
    assert np.all(out[:, [0, 2, 3, 5, 7]] == 0)  # empty slots stay as the layout left them
    assert out[:, used].std() == pytest.approx(0.5, rel=0.05)
    model.factor = 0.1
    assert model.perturb("step", x, np.random.default_rng(0), used)[:, used].std() == pytest.approx(0.05, rel=0.05)
    assert np.all(model.perturb("other", x, np.random.default_rng(0), used) == 0)  # unmeasured step: exact


def test_encrypted_sample_is_a_stable_spread_prefix():
    small, large = encrypted_sample(10_000, 5), encrypted_sample(10_000, 20)
    assert large[:5] == small and len(set(large)) == 20
    assert max(large) // 1000 != min(large) // 1000  # not one class of a class-ordered split


def test_profile_sums_by_kind_its_text_lines_and_plots(tmp_path):
    from ckksnet.deploy.cli import _profile_line, _summary_line
    from ckksnet.fidelity import profile
    from ckksnet.fidelity.report import make_plots

    steps = [{"name": f"s{i}", "kind": k, "seconds": 2.0 + i, "bootstrap_seconds": float(i % 2)}
             for i, k in enumerate(["linear", "relu", "linear"])]
    report = {"seconds": 9.0, "bootstraps": 1, "bootstrap_seconds": 1.0, "peak_rss_gb": 1.0, "steps": steps}
    prof = profile(report, {"image": 7})
    # kernel time is a step's time less its bootstraps: linear 2 + 4, relu 3 - 1
    assert prof["by_kind"] == {"bootstrap": 1.0, "linear": 6.0, "relu": 2.0} and prof["image"] == 7
    assert _summary_line("twin", {"images": 0}) == "twin: not run (0 images)"
    assert "99.5% identical" in _summary_line("twin", {"images": 4, "identical_top1": 99.5, "accuracy": 90.0,
                                                        "max_logit_error": 0.01})

    line = _profile_line(prof | {"key_memory_gb": {"automorphism_keys_present": 62, "automorphism_keys": 7.75}})
    assert "image 7" in line and "linear 6 s" in line and "rotation keys 7.75 GiB (62 automorphism keys present)" in line
    assert "rotation keys" not in _profile_line(prof)  # old records carry no key memory
    res = {"preset": "test", "alpha": 13, "profile": prof,
           "alpha_sweep": [{"alpha": a, "identical_top1": 99.0, "accuracy": 90.0, "images": 5} for a in (9, 13)]}
    paths = make_plots(res, {"twin": [1e-3, -2e-3, 0.0], "encrypted": [5e-4]}, tmp_path / "plots")
    assert [p.name for p in paths] == ["fidelity_logit_errors.png", "fidelity_layer_time.png", "fidelity_alpha.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_every_approximated_activation_is_reported_not_only_relu():
    """The report finds approximated activations by what their kernels declare
    (``Kernel.approximates``), not by a kind string: a ReLU and another activation alike."""
    from dataclasses import dataclass
    from types import SimpleNamespace

    from ckksnet.approx.relu import ReluApprox
    from ckksnet.fidelity import activation_reports, plan_identity
    from ckksnet.kernels import AddStep, Kernel, ReluStep

    @dataclass
    class _SquareApprox(Kernel):  # a polynomial stand-in for some activation, inputs x / B in [-1, 1]
        name: str
        kind = "square_approx"
        domain = 1.0
        approximates = "square"

    relu = ReluStep("relu", ReluApprox.from_table(13, 4.0), 1.0)
    steps = [(relu, [0], 1), (_SquareApprox("sq"), [1], 2), (AddStep("add"), [1, 2], 3)]
    plan = SimpleNamespace(steps=steps, values=[SimpleNamespace(scale=s) for s in (4.0, 4.0, 3.0, 3.0)],
                           preset=SimpleNamespace(name="test"))
    seen = {"relu": {"total": 10, "outside": 0, "max_ratio": 0.5}, "sq": {"total": 8, "outside": 2, "max_ratio": 1.5}}
    reports = activation_reports(plan, seen)
    assert set(reports) == {"relu", "sq"}  # the addition approximates nothing
    assert reports["relu"] == {"activation": "relu", "bound": 4.0, "total": 10, "outside": 0, "max_ratio": 0.5}
    assert reports["sq"] == {"activation": "square", "bound": 4.0, "total": 8, "outside": 2, "max_ratio": 1.5}
    identity = plan_identity(plan)
    assert identity["relu"] == [["relu", 13, relu.relu.sign.eps, 4.0]]
    assert identity["activations"] == [["sq", "square", "square_approx", 4.0]]
