"""What a compiled plan will cost, before any key exists: ``ckksnet plan``'s report.

Per step: kind, the ciphertexts its output spans (an activation larger than one ciphertext spans
several: work, bootstraps and key switches count every ciphertext), levels in and out,
bootstraps, rotation indices and key switches of its kernel, estimated seconds; totals: bootstraps, rotation keys and their memory, estimated time and peak
memory. Times come from the preset's measured cost model (:mod:`ckksnet.core.costs`); key
memory is the automorphism keys present (bootstrapping's, as measured for the preset, plus the
plan's own) times one key-switching key; the peak is the resident memory measured after
generating bootstrapping keys plus the plan's own keys and the run's measured working set.
"""
from __future__ import annotations

from ckksnet.core.backend import get_backend
from ckksnet.core.costs import cost_model
from ckksnet.core.text import count


def plan_report(plan) -> dict:
    """JSON-ready schedule and totals of ``plan`` (seconds, GiB; None where not measured)."""
    sched = plan.schedule
    preset = plan.preset
    costs = cost_model(preset.name, plan.backend)
    mem = costs.memory if costs else {}
    boot_auto = get_backend(plan.backend).bootstrap_key_count(preset) if sched.bootstrap_slots else 0
    keys = boot_auto + len(sched.client_rotations)
    one = mem.get("one_key_gib")
    key_gib = round(keys * one, 2) if one else None
    peak = None
    if "keys_gib" in mem and one:
        peak = round(mem["keys_gib"] + len(sched.client_rotations) * one + mem.get("run_overhead_gib", 0.0), 2)
    widths = [getattr(plan.values[o].layout, "ciphertexts", 1) for _, _, o in plan.steps]
    steps = [{"step": s.name, "kind": s.kind, "ciphertexts": k, "level_in": s.level_in, "level_out": s.level_out,
              "bootstraps": s.bootstraps, "rotations": s.rotations, "key_switches": s.key_switches,
              "estimated_seconds": s.seconds} for s, k in zip(sched.steps, widths)]
    acts = [{"step": k.name, "activation": k.kind, "levels": k.levels()}  # ReLU, polynomial, any activation
            for k, _, _ in plan.steps if k.domain is not None]
    return {"preset": preset.name, "backend": plan.backend, "secure": preset.secure, "ring_dim": preset.ring_dim,
            "slots": preset.slots,
            "depth": preset.depth, "levels_after_bootstrap": preset.levels_after_bootstrap,
            "input_level": sched.input_level, "input_shape": list(plan.input_shape),
            "input_ciphertexts": getattr(plan.input_layout, "ciphertexts", 1), "steps": steps,
            "activations": acts,
            "totals": {"steps": len(steps), "bootstraps": sched.bootstraps, "key_switches": sched.key_switches,
                       "rotation_keys_assumed": len(sched.key_rotations),
                       "rotation_keys_client_makes": len(sched.client_rotations),
                       "automorphism_keys": keys if sched.bootstrap_slots or keys else 0,
                       "rotation_key_gib": key_gib,
                       "estimated_seconds": round(sched.seconds, 1) if costs else None,
                       "estimated_bootstrap_seconds": round(sum(
                           costs.seconds("bootstrap", 0) * s.bootstraps for s in sched.steps), 1) if costs else None,
                       "estimated_peak_gib": peak,
                       # the run's own memory (torch, the plan's matrices) measured for this preset or not
                       "estimated_peak_is_keys_only": peak is not None and "run_overhead_gib" not in mem},
            "cost_model": costs.source if costs else "none measured for this preset"}


def plan_text(rep: dict) -> str:
    """The report as a table and a totals line."""
    rows = [f"{'step':<22} {'kind':<7} {'cts':>3} {'levels':>9} {'boots':>5} {'rots':>5} {'ks':>5} {'est s':>8}"]
    for s in rep["steps"]:
        rows.append(f"{s['step']:<22} {s['kind']:<7} {s.get('ciphertexts', 1):>3} "
                    f"{s['level_in']:>4}->{s['level_out']:<3} {s['bootstraps']:>5} "
                    f"{s['rotations']:>5} {s['key_switches']:>5} {s['estimated_seconds']:>8.2f}")
    t = rep["totals"]
    est = "n/a" if t["estimated_seconds"] is None else f"{t['estimated_seconds']:.0f} s ({t['estimated_seconds'] / 60:.1f} min)"
    key = "n/a" if t["rotation_key_gib"] is None else f"{t['rotation_key_gib']} GiB"
    peak = "peak memory n/a" if t["estimated_peak_gib"] is None else f"peak memory {t['estimated_peak_gib']} GiB"
    if t.get("estimated_peak_is_keys_only"):
        peak = f"key memory {t['estimated_peak_gib']} GiB (the process adds torch and the plan's matrices)"
    shape = "x".join(map(str, rep["input_shape"])) + " in " if rep.get("input_shape") else ""
    rows.append(f"preset {rep['preset']} (N={rep['ring_dim']}, {rep['slots']} slots, input {shape}"
                f"{rep.get('input_ciphertexts', 1)} ciphertext(s) at {rep['input_level']} levels): "
                f"{count(t['bootstraps'], 'bootstrap')} (one per ciphertext refreshed), {t['key_switches']} key switches, "
                f"{t['rotation_keys_client_makes']} rotation keys made beyond bootstrapping's "
                f"({t['automorphism_keys']} automorphism keys, {key}); estimated {est}, {peak}")
    kinds: dict = {}
    for a in rep.get("activations", []):
        kinds.setdefault((a["activation"], a["levels"]), []).append(a["step"])
    if kinds:
        rows.append("activations: " + "; ".join(f"{len(v)} x {k[0]} at {count(k[1], 'level')} ({', '.join(v[:3])}"
                                                 f"{', ...' if len(v) > 3 else ''})" for k, v in kinds.items()))
    rows.append("columns: cts = ciphertexts the step's output spans; levels = levels left in -> out; boots = "
                "bootstraps; rots = rotation indices; ks = key switches (rotations and relinearizations); "
                "est s = estimated seconds")
    rows.append(f"cost model: {rep['cost_model']}")
    return "\n".join(rows)
