"""The capacity planner: its arithmetic against hand-worked cases, every unit cost read from a
results file (and named with it), hostile inputs refused with a reason, and its Helm overlay
rendered and linted by Helm itself with the chart."""

from __future__ import annotations

import math
from pathlib import Path

import helm_python as helm
import orjson
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.devtools.plan import (
    Inputs,
    PlanError,
    default_results_dir,
    gpu_memory,
    helm_values,
    load_costs,
    make_plan,
    second_tier_values,
)
from guardstream.model.shapes import kv_bytes_per_token, parameters, weight_bytes
from tests.unit.deploy.test_deploy import CHART, KUBERNETES_VERSION, by_kind, render

pytestmark = pytest.mark.unit


def write_results(root: Path, *, triage_us: float = 100.0, gpu_0_6b: float = 100.0) -> Path:
    """Results files as the benches write them (their last JSON line), with round numbers."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline-test.json").write_text(
        orjson.dumps(
            {"bench": "pipeline", "posts": 20000, "triage_cpu_us_per_post": triage_us, "cpus": 2}
        ).decode()
        + "\n"
    )
    (root / "storage-test.json").write_text(
        orjson.dumps(
            {
                "bench": "storage",
                "bytes_per_verdict": 300,
                "bytes_per_near_entry": 200,
                "bytes_per_journal_entry": 800,
                "bytes_per_review_task": 1000,
                "bytes_per_review_post_text": 500,
            }
        ).decode()
        + "\n"
    )
    runs = [
        ("0.6B", gpu_0_6b, 90.0),
        ("4B", 50.0, 40.0),
        ("8B", 30.0, 20.0),
    ]
    lines = [
        orjson.dumps(
            {
                "bench": "scorer",
                "device": "NVIDIA H200",
                "engine": "vllm",
                "weights": f"random weights, Qwen3Guard-Gen-{size} shape (not the model)",
                "two_phase_posts_per_s": two_phase,
                "plain_posts_per_s": plain,
            }
        ).decode()
        for size, two_phase, plain in runs
    ]
    (root / "scorer-h200-test.jsonl").write_text("# a comment line\n" + "\n".join(lines) + "\n")
    return root


def test_a_hand_worked_plan(tmp_path: Path) -> None:
    costs = load_costs(write_results(tmp_path))
    plan = make_plan(Inputs(posts_per_day=86_400_000, shift_hours=10), costs)
    # 1,000 posts/s on average, 3,000 at peak; 65% are scored (30% repeats, 5% variants).
    assert plan.peak_posts_per_s == pytest.approx(3000)
    assert plan.tiers[0].posts_per_s == pytest.approx(1950)
    # 1,950 / (100 posts/s per GPU × 0.7) = 27.9 → 28; naive: 3,000 / (20 plain 8B × 0.7) → 215.
    assert plan.gpus == 28
    assert plan.naive_gpus == 215
    assert plan.gpu_ratio == pytest.approx(215 / 28)
    # 3,000 × 100 µs = 0.3 cores → one replica at 70% of a core.
    assert plan.triage_cores == pytest.approx(0.3)
    assert plan.triage_replicas == 1
    # 86.4 M × 0.65 × 0.03 = 1,684,800 contested a day; at peak 210,600 an hour × 2 min
    # = 7,020 person-hours per hour / 0.8 occupancy = 8,775 on shift; 56,160 h a day / 0.8 / 10.
    assert plan.contested_per_day == pytest.approx(1_684_800)
    assert plan.reviewers_on_shift == 8775
    assert plan.reviewer_headcount == 7020
    # Redis: 56.16 M new keys a day × 7 days × 300 / 200 B; 86.4 M decisions × 7 days × 800 B.
    assert plan.redis_bytes["verdict_cache"] == pytest.approx(117.936e9)
    assert plan.redis_bytes["near_duplicate_index"] == pytest.approx(78.624e9)
    assert plan.redis_bytes["decision_journal"] == pytest.approx(483.84e9)
    assert plan.redis_bytes["total_with_headroom"] == pytest.approx(680.4e9 * 1.5)
    # PostgreSQL: 1,684,800 × 30 days × 1,500 B.
    assert plan.postgres_bytes == pytest.approx(75.816e9)
    # Partitions: the catalogue's 12 for posts; room for twice the 28 scorers on requests.
    assert plan.partitions["posts.v1"] == 12
    assert plan.partitions["moderation.score-requests.v1"] == 56
    assert plan.msgs_per_partition["posts.v1"] == pytest.approx(250)
    # What has no measured cost is said, not guessed.
    assert any("API replicas are not planned" in note for note in plan.notes)


def write_api_result(root: Path, *, hit_us: float = 500.0, miss_us: float = 1500.0) -> Path:
    """A `bench/api.py` last line (round numbers) beside the other results."""
    (root / "api-test.json").write_text(
        "# the table, as comments\n"
        + orjson.dumps(
            {
                "bench": "api",
                "hit_rps": 400.0,
                "api_cpu_us_per_hit": hit_us,
                "api_cpu_us_per_miss": miss_us,
                "machine": "x86_64, 2 cpus",
                "quick": False,
            }
        ).decode()
        + "\n"
    )
    return root


def test_api_replicas_come_from_the_api_bench_cpu_per_request(tmp_path: Path) -> None:
    root = write_api_result(write_results(tmp_path))
    costs = load_costs(root)
    assert costs.api_cpu_us_per_hit is not None and costs.api_cpu_us_per_miss is not None
    assert costs.api_cpu_us_per_hit.source == costs.api_cpu_us_per_miss.source == "api-test.json"
    plan = make_plan(Inputs(posts_per_day=86_400_000, api_share=0.5), costs)
    # 1,500 posts/s at peak through the API: 35% hits × 500 µs + 65% misses × 1,500 µs
    # = 1,150 µs each → 1.725 cores → 3 replicas at 70% of a core each.
    assert plan.api_cores == pytest.approx(1.725)
    assert plan.api_replicas == 3
    assert not any("API replicas are not planned" in note for note in plan.notes)
    assert plan.as_dict()["api"] == {"cores": 1.73, "replicas": 3}
    # The file's values count: a dearer miss, more replicas.
    dearer = load_costs(write_api_result(write_results(tmp_path / "b"), miss_us=3000.0))
    assert make_plan(Inputs(posts_per_day=86_400_000, api_share=0.5), dearer).api_replicas == 5
    # No API traffic: no replicas, still planned.
    assert make_plan(Inputs(posts_per_day=86_400_000), costs).api_replicas == 0
    done = CliRunner().invoke(
        app,
        [
            "plan",
            "--posts-per-day",
            "86.4e6",
            "--api-share",
            "0.5",
            "--json",
            "--results",
            str(root),
        ],
    )
    assert done.exit_code == 0, done.output
    found = orjson.loads(done.stdout)
    assert found["api"]["replicas"] == 3
    assert found["unit_costs"]["api_cpu_us_per_miss"]["source"] == "api-test.json"


def test_a_quick_api_run_is_no_unit_cost(tmp_path: Path) -> None:
    root = write_results(tmp_path)
    (root / "api-quick.json").write_text(
        orjson.dumps(
            {"bench": "api", "api_cpu_us_per_hit": 1.0, "api_cpu_us_per_miss": 1.0, "quick": True}
        ).decode()
        + "\n"
    )
    plan = make_plan(Inputs(posts_per_day=1e6, api_share=1.0), load_costs(root))
    assert plan.api_replicas is None and plan.api_cores is None
    assert any("API replicas are not planned" in note for note in plan.notes)


def test_a_cascade_adds_its_second_tier(tmp_path: Path) -> None:
    costs = load_costs(write_results(tmp_path))
    plan = make_plan(
        Inputs(posts_per_day=86_400_000, escalate_to="4B", escalation_share=0.2), costs
    )
    # 20% of the 1,950 scored posts/s go on to 4B at 50 posts/s per GPU × 0.7: 390 / 35 → 12.
    assert [t.gpus for t in plan.tiers] == [28, 12]
    assert plan.gpus == 40
    assert plan.partitions["moderation.score-escalations.v1"] == 24
    second = second_tier_values(plan)
    assert second is not None and second["model"] == "Qwen/Qwen3Guard-Gen-4B"


def test_every_unit_cost_is_read_from_its_file(tmp_path: Path) -> None:
    costs = load_costs(write_results(tmp_path))
    for name, cost in costs.every().items():
        assert (tmp_path / cost.source).is_file(), name
    # And it is the file's value that counts: change the file, the plan changes.
    slower = load_costs(write_results(tmp_path / "b", triage_us=1000.0, gpu_0_6b=50.0))
    base = make_plan(Inputs(posts_per_day=86_400_000), costs)
    other = make_plan(Inputs(posts_per_day=86_400_000), slower)
    assert other.triage_cores == pytest.approx(10 * base.triage_cores)
    assert other.gpus == math.ceil(1950 / 35)


def test_the_shipped_results_give_a_plan_citing_them() -> None:
    costs = load_costs()
    plan = make_plan(Inputs(posts_per_day=1e9), costs)
    for name, cost in plan.costs.every().items():
        assert (default_results_dir() / cost.source).is_file(), name
    assert plan.gpus > 0 and plan.naive_gpus > plan.gpus


def test_missing_results_are_named(tmp_path: Path) -> None:
    root = write_results(tmp_path)
    (root / "storage-test.json").unlink()
    with pytest.raises(PlanError, match=r"bytes_per_verdict.*bench/storage\.py"):
        load_costs(root)
    with pytest.raises(
        PlanError,
        match=r"no measured scorer throughput for 0\.6B \(two_phase\) on h100; measured: h200",
    ):
        make_plan(Inputs(posts_per_day=1e6, gpu="h100"), load_costs(write_results(tmp_path / "c")))


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12).map(float)
)


@given(
    posts=numbers,
    peak=numbers,
    dup=numbers,
    near=numbers,
    contested=numbers,
    util=numbers,
    minutes=numbers,
    days=numbers,
    api=numbers,
)
def test_any_inputs_give_a_plan_or_a_reason(
    tmp_path_factory: pytest.TempPathFactory,
    posts: float,
    peak: float,
    dup: float,
    near: float,
    contested: float,
    util: float,
    minutes: float,
    days: float,
    api: float,
) -> None:
    costs = load_costs(write_api_result(write_results(tmp_path_factory.mktemp("r"))))
    inputs = Inputs(
        posts_per_day=posts,
        peak_to_mean=peak,
        duplicate_share=dup,
        near_duplicate_share=near,
        contested_share=contested,
        gpu_utilisation=util,
        minutes_per_review=minutes,
        cache_days=days,
        api_share=api,
    )
    try:
        plan = make_plan(inputs, costs)
    except PlanError as exc:
        assert str(exc)
        return
    assert plan.gpus >= 0 and plan.triage_replicas >= 1
    assert plan.api_replicas is not None and plan.api_replicas >= 0
    assert plan.api_cores is not None and math.isfinite(plan.api_cores)
    assert all(math.isfinite(v) and v >= 0 for v in plan.redis_bytes.values())
    orjson.dumps(plan.as_dict())


def test_the_command_prints_json_and_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    root = write_results(tmp_path)
    done = runner.invoke(app, ["plan", "--posts-per-day", "1e9", "--json", "--results", str(root)])
    assert done.exit_code == 0, done.output
    found = orjson.loads(done.stdout)
    assert found["unit_costs"]["triage_cpu_us_per_post"]["source"] == "pipeline-test.json"
    assert found["gpu_ratio_naive_over_guardstream"] > 1
    refused = runner.invoke(
        app, ["plan", "--posts-per-day", "1e9", "--duplicate-share", "1.5", "--results", str(root)]
    )
    assert refused.exit_code == 2
    assert "duplicate_share must be between 0 and 1, not 1.5" in refused.output
    table = runner.invoke(app, ["plan", "--posts-per-day", "1e9", "--results", str(root)])
    assert table.exit_code == 0 and "pipeline-test.json" in table.stdout


def test_the_helm_overlay_renders_and_lints_with_the_chart(tmp_path: Path) -> None:
    root = write_results(tmp_path)
    done = CliRunner().invoke(
        app,
        [
            "plan",
            "--posts-per-day",
            "1e9",
            "-o",
            "helm",
            "--escalate-to",
            "8B",
            "--escalation-share",
            "0.1",
            "--results",
            str(root),
        ],
    )
    assert done.exit_code == 0, done.output
    first, second = list(yaml.safe_load_all(done.stdout))
    plan = make_plan(
        Inputs(posts_per_day=1e9, escalate_to="8B", escalation_share=0.1), load_costs(root)
    )
    assert first == helm_values(plan)
    for values in (first, second):
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []
    deployments = by_kind(render(first), "Deployment")
    assert deployments["gs-scorer"]["spec"]["replicas"] == plan.tiers[0].gpus
    assert deployments["gs-triage"]["spec"]["replicas"] == plan.triage_replicas
    tier2 = by_kind(render(second), "Deployment")
    assert set(tier2) == {"gs-scorer"}
    assert tier2["gs-scorer"]["spec"]["replicas"] == plan.tiers[1].gpus


def test_the_shapes_match_the_published_sizes() -> None:
    # Qwen3 model cards: 0.6B has 0.44B parameters besides its embeddings; 4B 3.6B; 8B 6.95B.
    embeddings = {"0.6B": 151936 * 1024, "4B": 151936 * 2560, "8B": 2 * 151936 * 4096}
    published = {"0.6B": 0.44e9, "4B": 3.6e9, "8B": 6.95e9}
    for size, expected in published.items():
        assert parameters(size) - embeddings[size] == pytest.approx(expected, rel=0.02), size
    # K and V of 28 / 36 layers × 8 KV heads × 128 dims, 2 bytes each.
    assert kv_bytes_per_token("0.6B") == 2 * 28 * 8 * 128 * 2
    assert kv_bytes_per_token("8B") == 2 * 36 * 8 * 128 * 2


def test_gpu_memory_gives_the_full_context_where_it_fits() -> None:
    roomy = gpu_memory("8B", Inputs(posts_per_day=1, gpu="h200"))
    budget = 141e9 * 0.9 - weight_bytes("8B") - 4e9
    assert roomy.kv_tokens == int(budget // kv_bytes_per_token("8B"))
    assert roomy.max_model_len == 32_768
    assert roomy.posts_in_flight == roomy.kv_tokens // 640
    # 7% of an H100 for 0.6B: 5.6 GB - 1.2 GB weights - 4 GB reserve ≈ 3,600 tokens → 2,048.
    tight = gpu_memory("0.6B", Inputs(posts_per_day=1, gpu="h100", gpu_memory_utilization=0.07))
    assert tight.max_model_len == 2048 and 2048 <= tight.kv_tokens < 4096
    with pytest.raises(PlanError, match="8B does not fit a h100"):
        gpu_memory("8B", Inputs(posts_per_day=1, gpu="h100", gpu_memory_utilization=0.2))


def test_the_overlay_sets_the_context_the_memory_allows(tmp_path: Path) -> None:
    plan = make_plan(Inputs(posts_per_day=1e9), load_costs(write_results(tmp_path)))
    env = {e["name"]: e["value"] for e in helm_values(plan)["scorer"]["env"]}
    assert env["GUARDSTREAM_MAX_MODEL_LEN"] == str(plan.tiers[0].memory.max_model_len) == "32768"


def test_the_capacity_page_shows_what_the_planner_computes() -> None:
    """The docs' walk-through and memory table are this planner's output on the shipped
    results: a new results file that changes them fails here until the page is updated."""
    page = (Path(__file__).parents[3] / "docs" / "operations" / "capacity.md").read_text()
    plan = make_plan(Inputs(posts_per_day=1e9), load_costs())
    assert f"**{plan.gpus:,}**" in page
    assert f"**{plan.naive_gpus:,}**" in page
    assert f"**{plan.gpu_ratio:.1f}×**" in page
    for gpu in ("h100", "h200"):
        for size in ("0.6B", "4B", "8B"):
            m = gpu_memory(size, Inputs(posts_per_day=1, gpu=gpu))
            row = (
                f"| {size} | {gpu.upper()} | {m.weight_bytes / 1e9:.1f} GB | "
                f"{m.kv_bytes_per_token / 1024:.0f} KiB | {m.kv_tokens:,} | {m.max_model_len:,} |"
            )
            assert row in page, row
