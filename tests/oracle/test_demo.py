"""The main job in its --quick form: data, tokenizers, teachers, pivot, students in both conditions,
the evaluations along the way, the pictures, the DLF part and the report run end to end through
logitfuse (the accuracies of such tiny runs are not asserted; the pipeline is)."""
import json
import os
import subprocess
import sys

from conftest import BINARY, ROOT

sys.path.insert(0, str(ROOT / "demo"))
import tasks  # noqa: E402

SKILLS = ("arithmetic", "reverse")


def run_demo(out, *extra):
    env = {**os.environ, "LOGITFUSE_BIN": str(BINARY)}
    return subprocess.run([sys.executable, str(ROOT / "demo" / "run_demo.py"), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=900)


def test_demo_quick_produces_the_report(tmp_path):
    proc = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = tmp_path / "data-seed-0"
    report = json.loads((root / "report.json").read_text())
    assert set(report["models"]) == {"teacher-arithmetic", "teacher-reverse", "pivot", "ample-data SFT"}
    # The machine's CPU kernels decide how trained weights round, so the report says which ran.
    assert report["machine"].startswith("CPU ") and "ATen CPU kernels" in report["machine"]
    assert report["pivot"] == {"rows": {"arithmetic": 30, "reverse": 20}, "lr": 1e-3, "steps": 10}
    assert set(report["conditions"]) == {"clean", "noisy"}
    for condition in report["conditions"].values():
        assert set(condition["students"]) == {"sft", "infigfusion", "on-policy"}
    rows = list(report["models"].values()) + [s for c in report["conditions"].values() for s in c["students"].values()]
    for scores in rows:
        for skill in SKILLS:
            assert 0.0 <= scores[skill]["mean"] <= 1.0
            assert scores[f"{skill}-ppl"]["mean"] >= 1.0
    # The tokenizers differ the way real ones do: most tokens shared, digit groups not.
    coverage = report["exact_coverage"]
    for teacher in ("arithmetic", "reverse"):
        assert all(0.0 < v <= 1.0 for v in coverage[teacher].values()), (teacher, coverage[teacher])
    # The harsh tokenizer (--harsh-teachers) shares far fewer tokens with the student.
    assert coverage["harsh"]["arithmetic"] < coverage["arithmetic"]["arithmetic"]
    assert report["exact_coverage"]["arithmetic"]["arithmetic"] < 1.0
    # Evaluation along the way: the pivot at step 0, a checkpoint, the final step; one picture per skill.
    curve = report["curves"]["noisy"]["infigfusion"]
    assert {"0", "5", "10"} <= set(curve)
    for skill in SKILLS:
        assert (root / f"exact_match_{skill}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = proc.stdout
    assert "Fusion benchmark v2" in out and "[clean fusion set]" in out and "[noisy fusion set]" in out
    assert "noisy: beat SFT-only on every skill" in out
    # Dynamic Logit Fusion on the same skills: every strategy on each skill, from logitfuse eval.
    dlf = report["dlf"]["strategies"]
    assert {"large_only", "static", "dynamic", "dynamic, both experts", "expert alone", "dynamic, merged expert",
            "dynamic, TIES-merged expert", "TIES-merged expert alone"} <= set(dlf)
    for scores in dlf.values():
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert (root / "dlf_trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"dynamic, both, closest", "dynamic, both, route"} <= set(dlf)
    # The in-context rows: their own models (trained with worked-example rows), with and without shots.
    assert {"in-context models: large_only", "in-context models: large_only, 2-shot",
            "in-context models: dynamic, both, route, 2-shot"} <= set(dlf)
    assert "2-shot vs 0-shot (in-context models: dynamic)" in out
    # Each expert's distance from the base, measured on both skills, and the multi-task goal checked per criterion.
    shift = report["dlf"]["expert_kl_from_base"]
    assert set(shift) == set(SKILLS) and all(v >= 0 for by in shift.values() for v in by.values())
    assert "multi-task goal (dynamic, both, route)" in out
    # DLF's held-out set: each skill's evaluation and fusion prompts (20 + 30 in --quick), which no DLF
    # model trains on.
    assert report["dlf"]["held_out"] == {skill: 50 for skill in SKILLS}
    for row in ("dynamic", "static", "large_only"):
        where = (root / "eval" / "dlf" / "pivot-rows30-20-lr0.001-steps10" / "base10-expert10-lr0.00025-heldout50"
                 / f"{row}-arithmetic")
        metrics = json.loads((where / "metrics.json").read_text())
        assert metrics["strategy"] == row and metrics["tasks"]["arithmetic"]["n"] == 50
    # A rerun reuses everything it has and prints the same tables.
    again = run_demo(tmp_path)
    assert again.returncode == 0, again.stderr
    table = lambda text: [l for l in text.splitlines() if l.startswith(("teacher-", "pivot", "ample", "sft", "infigfusion",
                                                                         "on-policy", "large_only", "static", "dynamic"))]
    assert table(again.stdout) == table(out)


def test_data_seed_regenerates_every_split(tmp_path):
    """Splits are disjoint by prompt, and another data seed gives other splits; the noisy set differs
    from the clean one in the stated share of final answers only."""
    import types

    import data as bench_data
    made = {}
    for seed in (0, 1):
        args = types.SimpleNamespace(data_seed=seed, eval_size=30, fusion_size=40, general_size=30, pool_size=100,
                                     noise=0.25)
        made[seed] = bench_data.make_data(tmp_path / str(seed), args)
    d = made[0]
    prompts = {}
    for name in ("eval_arithmetic", "eval_reverse", "fusion-clean", "general", "pool_arithmetic", "pool_reverse"):
        prompts[name] = {r["prompt"] for r in bench_data.read_jsonl(d / f"{name}.jsonl")}
    names = list(prompts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not prompts[a] & prompts[b], (a, b)
    clean = bench_data.read_jsonl(d / "fusion-clean.jsonl")
    noisy = bench_data.read_jsonl(d / "fusion-noisy.jsonl")
    assert [r["prompt"] for r in clean] == [r["prompt"] for r in noisy]
    for skill in SKILLS:
        wrong = [n for c, n in zip(clean, noisy) if c["skill"] == skill and c["answer"] != n["answer"]]
        assert len(wrong) == 10, skill  # 25 % of 40
        for row in wrong:  # the wrong answer is the one the worked response ends with
            assert row["response"].endswith(f"The answer is {row['answer']}.")
    other = {r["prompt"] for r in bench_data.read_jsonl(made[1] / "fusion-clean.jsonl")}
    assert other != prompts["fusion-clean"]


def test_dlf_held_out_is_eval_and_clean_fusion_rows(tmp_path):
    """DLF's held-out set: each skill's evaluation rows and its fusion rows with their clean answers,
    none of whose prompts any DLF model trains on (general pool, teacher pools)."""
    import types

    import data as bench_data
    args = types.SimpleNamespace(data_seed=0, eval_size=30, fusion_size=40, general_size=30, pool_size=100, noise=0.25)
    d = bench_data.make_data(tmp_path, args)
    assert bench_data.dlf_held_out(d) == {skill: 70 for skill in SKILLS}
    trained = {r["prompt"] for name in ("general", "pool_arithmetic", "pool_reverse")
               for r in bench_data.read_jsonl(d / f"{name}.jsonl")}
    clean = {r["prompt"]: r for r in bench_data.read_jsonl(d / "fusion-clean.jsonl")}
    for skill in SKILLS:
        rows = bench_data.read_jsonl(d / f"dlf-heldout_{skill}.jsonl")
        assert rows[:30] == bench_data.read_jsonl(d / f"eval_{skill}.jsonl")
        assert all(r["skill"] == skill and r["prompt"] not in trained for r in rows)
        assert all(clean[r["prompt"]] == r and not r.get("corrupted") for r in rows[30:])
        assert len({r["prompt"] for r in rows}) == 70


def test_pivot_pool_is_the_first_rows_of_each_skill_in_the_general_pool(tmp_path):
    """The pivot trains on a given number of each skill's general-pool rows (--pivot-rows): the first
    ones of each skill, in the pool's mixed order."""
    import types

    import data as bench_data
    args = types.SimpleNamespace(data_seed=0, eval_size=10, fusion_size=10, general_size=30, pool_size=20, noise=0.3)
    d = bench_data.make_data(tmp_path, args)
    general = bench_data.read_jsonl(d / "general.jsonl")
    path = bench_data.pivot_pool(d, [20, 7])
    assert path.name == "general-pivot-20-7.jsonl"
    rows = bench_data.read_jsonl(path)
    for skill, n in zip(SKILLS, (20, 7)):
        assert [r for r in rows if r["skill"] == skill] == [r for r in general if r["skill"] == skill][:n]
    positions = [general.index(r) for r in rows]
    assert positions == sorted(positions)  # still mixed, in the pool's order


def test_sign_test_counts_only_the_questions_the_two_decodings_disagree_on():
    import report
    a = [True] * 50 + [True] * 5 + [False] * 7 + [False] * 30
    b = [True] * 50 + [False] * 5 + [True] * 7 + [False] * 30
    only_a, only_b, p = report.sign_test(a, b)
    assert (only_a, only_b) == (5, 7)
    assert abs(p - 2 * (1 + 12 + 66 + 220 + 495 + 792) / 2 ** 12) < 1e-12  # exact binomial, n = 12, k <= 5
    assert report.sign_test(b, a)[2] == p
    assert report.sign_test(a, a) == (0, 0, 1.0)
    assert report.sign_test([True] * 10, [False] * 10)[2] == 2 / 2 ** 10


def test_corrupted_arithmetic_is_self_consistent():
    import random
    rng = random.Random(0)
    for example in tasks.make_split("arithmetic", 50, seed="t"):
        bad = tasks.corrupt(example, rng)
        steps = bad["response"].split(". ")
        first = int(steps[0].split(" = ")[1])
        product = steps[1].split(" = ")
        assert int(product[0].split(" * ")[0]) == first
        assert int(product[1]) == first * int(product[0].split(" * ")[1]) == int(bad["answer"])
        assert bad["answer"] != example["answer"]


def test_worked_example_rows(tmp_path):
    """The in-context DLF models' training file: every source row, plus a copy of `share` of them with
    1..k other rows of the same skill before the question as chat turns, in the training format."""
    import data as bench_data
    rows = [dict(r, skill=skill) for skill in SKILLS for r in tasks.make_split(skill, 20, seed="w")]
    source = tmp_path / "general.jsonl"
    bench_data.write_jsonl(source, rows)
    out = bench_data.with_worked_examples(source, tmp_path / "general-icl.jsonl", 3, 0.5, seed=0)
    mixed = bench_data.read_jsonl(out)
    plain = [r for r in mixed if "messages" not in r]
    worked = [r for r in mixed if "messages" in r]
    assert sorted(r["prompt"] for r in plain) == sorted(r["prompt"] for r in rows)
    assert len(worked) == 20
    by_prompt = {r["prompt"]: r for r in rows}
    counts = set()
    for r in worked:
        turns = r["messages"]
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2)
        pairs = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns), 2)]
        question = pairs[-1][0]
        assert pairs[-1][1] == by_prompt[question]["response"]
        shots = pairs[:-1]
        counts.add(len(shots))
        assert 1 <= len(shots) <= 3 and question not in {p for p, _ in shots}
        for prompt, response in shots:
            assert by_prompt[prompt]["response"] == response and by_prompt[prompt]["skill"] == r["skill"]
    assert counts == {1, 2, 3}
    # Written once: a second call keeps the file.
    assert bench_data.with_worked_examples(source, out, 1, 0.1, seed=5).read_text() == out.read_text()


def test_the_demo_pins_the_cpu_kernels_the_machine_has():
    """The demo's runs use LibTorch's AVX2 kernels by default (the same weights on every machine
    that has them); LibTorch would run kernels the processor lacks, so the demo refuses those."""
    import lf
    from lf import kernels_available

    line = "CPU Some CPU, 2 threads; ATen CPU kernels "
    assert kernels_available("avx2", line + "AVX512") and kernels_available("avx2", line + "AVX2")
    assert not kernels_available("avx2", line + "DEFAULT") and not kernels_available("avx512", line + "AVX2")
    assert not kernels_available("avx2", line + "SVE256")  # not an x86 machine
    assert kernels_available("native", line + "DEFAULT") and kernels_available("default", line + "AVX2")
    # What the runner passes: LibTorch's own override, and nothing for native.
    assert lf.Runner(1, 1, "avx2").kernels == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert lf.Runner(1, 1, "native").kernels == {}
    version = lf.Runner(1, 1, "default")("version").stdout
    assert "ATen CPU kernels DEFAULT" in version
