"""REPORT.md sorted by latency and pareto.png with the frontier marked."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from export.pareto import class_latency_ms, pareto_front
from export.report import (
    elapsed_training_s,
    render_report,
    serving_roles,
    smallest_student,
    write_report,
)
from service.contract.model_card import EpochRecord, ModelCard, ProfileRow, read_manifest


def _variant(
    card: ModelCard, name: str, top1: float, p50: float, arch: str | None = None
) -> ModelCard:
    """``card`` renamed, with its accuracy and latency; its own architecture unless ``arch``."""
    rows = tuple(
        ProfileRow(batch_size=bs, p50_ms=p50 * bs, p99_ms=p50 * bs * 1.5, images_per_s=1000 / p50)
        for bs in (1, 8, 32, 128)
    )
    return card.model_copy(
        update={
            "name": name,
            "training": card.training.model_copy(update={"architecture": arch or name}),
            "metrics": card.metrics.model_copy(update={"top1": top1}),
            "profile": card.profile.model_copy(update={"rows": rows}),
        }
    )


def _cards(digits_repo: Path) -> list[ModelCard]:
    base = read_manifest(digits_repo / "digits-logreg")
    return [
        _variant(base, "fast-weak", 0.90, 0.1),
        _variant(base, "slow-strong", 0.99, 2.0),
        _variant(base, "dominated", 0.92, 1.0),  # slower than fast-weak, weaker than mid
        _variant(base, "mid", 0.95, 0.5),
        _variant(base, "tie-slower", 0.95, 0.7),  # same accuracy as mid, slower
    ]


def test_pareto_front_keeps_only_undominated_models(digits_repo: Path) -> None:
    assert pareto_front(_cards(digits_repo)) == {"fast-weak", "mid", "slow-strong"}


def test_models_doing_the_same_work_share_one_latency_on_the_front(digits_repo: Path) -> None:
    base = read_manifest(digits_repo / "digits-logreg")
    cards = [
        _variant(base, "tiny", 0.80, 0.05),
        # one architecture trained three ways: the least accurate measured fastest, by noise
        _variant(base, "alone", 0.85, 0.18, arch="wrn"),
        _variant(base, "kd", 0.86, 0.26, arch="wrn"),
        _variant(base, "mimic", 0.87, 0.21, arch="wrn"),
        _variant(base, "teacher", 0.90, 1.70),
    ]
    assert class_latency_ms(cards)["alone"] == class_latency_ms(cards)["kd"] == 0.21
    assert pareto_front(cards) == {"tiny", "mimic", "teacher"}
    # a quantized variant is other work: it has a latency and a place on the front of its own
    int8 = _variant(base, "mimic-int8", 0.868, 0.12, arch="wrn").model_copy(
        update={"precision": "int8"}
    )
    assert pareto_front([*cards, int8]) == {"tiny", "mimic-int8", "mimic", "teacher"}
    text = render_report([*cards, int8], "Test zoo")
    starred = {r.split("|")[1].strip() for r in text.splitlines() if r.rstrip(" |").endswith("★")}
    assert starred == {"tiny", "mimic-int8", "mimic", "teacher"}


def test_report_is_sorted_by_latency_and_marks_the_front(digits_repo: Path) -> None:
    text = render_report(_cards(digits_repo), "Test zoo").split("\n## ")[0]  # the main table
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    for column in ("top-1 %", "p50 ms b1", "p99 ms b1", "img/s b32", "params", "MACs", "size"):
        assert column in header
    names = [r.split("|")[1].strip() for r in body]
    assert names == ["fast-weak", "mid", "tie-slower", "dominated", "slow-strong"]
    starred = {r.split("|")[1].strip() for r in body if r.rstrip(" |").endswith("★")}
    assert starred == {"fast-weak", "mid", "slow-strong"}
    assert "| 95.00 |" in body[1] and "| 0.500 | 0.750 |" in body[1]
    assert "Machine: " in text and "pareto.png" in text


def test_write_report_produces_markdown_and_a_png(digits_repo: Path, tmp_path: Path) -> None:
    report, png = write_report(tmp_path, _cards(digits_repo), "Test zoo")
    assert report == tmp_path / "REPORT.md" and "slow-strong" in report.read_text()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 800


def _trained(
    card: ModelCard, name: str, top1: float, p50: float, method: str, **training: object
) -> ModelCard:
    c = _variant(card, name, top1, p50)
    update = {"method": method, "architecture": "wrn-16-1", "teacher": None, "epochs": 7.0,
              "wall_time_s": 600.0, "recipe": "sgd, 7 epochs", **training}  # fmt: skip
    return c.model_copy(
        update={
            "training": c.training.model_copy(update=update),
            "metrics": c.metrics.model_copy(update={"dataset": "cifar10", "n": 10_000}),
            "macs": 1_000_000,
        }
    )


def _zoo(digits_repo: Path) -> list[ModelCard]:
    base = read_manifest(digits_repo / "digits-logreg")
    teacher = _trained(base, "c-teacher", 0.93, 10.0, "baseline", architecture="wrn-40-2")
    teacher = teacher.model_copy(update={"macs": 12_000_000})
    booster = {"booster": 0.915}
    return [
        teacher,
        _trained(base, "c-alone", 0.880, 1.0, "baseline"),
        _trained(base, "c-kd", 0.881, 1.0, "kd", teacher="c-teacher"),
        _trained(
            base,
            "c-rocket",
            0.900,
            1.0,
            "rocket",
            teacher="wrn-40-1",
            companions=booster,
            config={"booster": "wrn-40-1"},
        ),
        _trained(base, "c-rocket-kd", 0.905, 2.5, "rocket-kd", teacher="c-teacher"),
    ]


def test_students_section_measures_the_best_student_against_the_teacher(
    digits_repo: Path,
) -> None:
    cards = _zoo(digits_repo)
    cards = [  # one student with its agreement with the teacher measured, the others without
        c.model_copy(update={"metrics": c.metrics.model_copy(update={"teacher_agreement": 0.9712})})
        if c.name == "c-rocket-kd"
        else c
        for c in cards
    ]
    text = render_report(cards, "zoo")
    section = text.split("## Students against the teacher")[1].split("##")[0]
    assert "Teacher: **c-teacher** (wrn-40-2), top-1 93.00 %" in section
    # Throughput at batch 32 is 1000/p50: the teacher 100 img/s, c-rocket-kd 400 img/s.
    assert "| c-rocket-kd | fp32 | 90.50 | +2.50 | 97.12 | 4.0x | 12.0x |" in section
    assert "| c-kd | " in section and "| - |" in section
    assert "Best student: **c-rocket-kd**, 4.0x the teacher's throughput at batch 32, " \
        "2.50 points below the teacher's top-1." in section  # fmt: skip
    assert "c-teacher |" not in section.split("|---|")[1]
    training = text.split("## Training")[1].split("##")[0]
    assert "| c-rocket | rocket | wrn-16-1 | 7 | 10.0 min | sgd, 7 epochs |" in training
    assert "Training time of these 5 networks, summed: 0 h 50 min" in training
    alone = render_report([c for c in cards if c.name == "c-rocket"], "zoo")
    assert "Training time of this network, summed: 0 h 10 min" in alone


def test_no_comparison_without_the_methods_to_compare(digits_repo: Path) -> None:
    text = render_report(_cards(digits_repo), "Test zoo")
    assert "Every method on one student" not in text and "Students against" not in text


def test_the_report_command_rewrites_the_report_from_the_cards_alone(
    digits_repo: Path, tmp_path: Path
) -> None:
    """`python -m export report REPO` renders REPORT.md and pareto.png without measuring:
    every manifest stays byte for byte as it was."""
    import shutil

    from export.__main__ import main

    repo = tmp_path / "repo"
    shutil.copytree(digits_repo, repo)
    manifests = {p: p.read_bytes() for p in repo.rglob("manifest.json")}
    assert main(["report", str(repo)]) == 0
    report = (repo / "REPORT.md").read_text(encoding="utf-8")
    assert report.startswith("# Model zoo: digits") and "digits-slow" in report
    assert (repo / "pareto.png").is_file()
    assert {p: p.read_bytes() for p in repo.rglob("manifest.json")} == manifests
    assert main(["report", str(tmp_path / "missing")]) == 1  # a clear error, not a traceback


def _timed(spans: list[tuple[float, float]]) -> tuple[EpochRecord, ...]:
    """Epochs trained over these (start, end) spans, Unix times."""
    return tuple(
        EpochRecord(epoch=i + 1, loss=1.0, train_acc=0.5, test_top1=0.5, lr=0.1, img_per_s=10.0,
                    epoch_time_s=end - start, finished_at=end)
        for i, (start, end) in enumerate(spans)
    )  # fmt: skip


def test_elapsed_training_time_counts_networks_side_by_side_once(digits_repo: Path) -> None:
    base = read_manifest(digits_repo / "digits-logreg")
    t0 = 1_800_000_000.0
    teacher = _timed([(t0, t0 + 3600), (t0 + 3600, t0 + 7200)])  # alone for two hours
    # Two students in lanes after it, overlapping for half an hour, then a gap (no session).
    a = _timed([(t0 + 7200, t0 + 9000)])
    b = _timed([(t0 + 7200 + 1800, t0 + 9000 + 1800), (t0 + 20_000, t0 + 20_600)])
    cards = [
        _trained(base, "t", 0.93, 10.0, "baseline", history=teacher),
        _trained(base, "a", 0.88, 1.0, "baseline", history=a),
        _trained(base, "b", 0.89, 1.0, "kd", history=b),
    ]
    elapsed, untimed = elapsed_training_s(cards)
    assert (elapsed, untimed) == (7200 + 3600 + 600, 0)
    text = render_report(cards, "zoo")
    assert "Elapsed training time: 3 h 10 min, the union of every network's epochs" in text
    # A network without epoch times (a card from before they were kept) is left out, and said so.
    older = _trained(base, "old", 0.80, 1.0, "baseline")
    assert elapsed_training_s([*cards, older]) == (elapsed, 1)
    assert "once; 1 network(s) without epoch times are left out." in render_report(
        [*cards, older], "zoo"
    )
    assert "Elapsed training time" not in render_report([older], "zoo")


def test_the_serving_roles_are_the_teacher_its_int8_and_the_smallest_int8_student(
    digits_repo: Path,
) -> None:
    """serving-figures.sh measures these by default: of int8 students of equal MACs the most
    accurate (not the one that happened to measure fastest), never the teacher's own int8."""
    zoo = _zoo(digits_repo)
    teacher = zoo[0]

    def int8(card: ModelCard, top1: float, p50: float, macs: int | None = None) -> ModelCard:
        c = _variant(card, f"{card.name}-int8", top1, p50, card.training.architecture)
        update = {"precision": "int8", "derived_from": card.name, "macs": macs or card.macs}
        return c.model_copy(update=update)

    variants = [
        int8(teacher, 0.929, 5.0, macs=1),  # the fewest MACs, but the teacher's
        int8(zoo[1], 0.879, 0.2),  # alone: fastest
        int8(zoo[3], 0.899, 0.9),  # rocket: the most accurate
        int8(zoo[2], 0.880, 0.5, macs=2_000_000),  # kd, more MACs (say another architecture)
    ]
    cards = [*zoo, *variants]
    assert serving_roles(cards) == {
        "LARGEST": "c-teacher",
        "HEAVY_INT8": "c-teacher-int8",
        "SMALLEST": "c-rocket-int8",
    }
    fp32 = smallest_student(cards, "fp32")  # four WRN-16-1 of 1M MACs: the most accurate
    assert fp32 is not None and fp32.name == "c-rocket-kd"
    assert serving_roles(zoo) == {"LARGEST": "c-teacher"}  # no int8: no such roles


def test_a_zoo_trained_partly_on_an_accelerator_says_which_epochs_ran_where(
    digits_repo: Path,
) -> None:
    """Cards whose runs began on a GPU machine (``zoo --train-only``) and finished on the CPU:
    the Training section lists each device once, with a letter, and each network's epochs there."""
    base = read_manifest(digits_repo / "digits-logreg")
    gpu, cpu = "cuda (NVIDIA H200)", "cpu (AMD EPYC, 2 cores)"
    t0 = 1_800_000_000.0
    # s: 2 epochs of 10 min on the GPU, then 2 of an hour here; g: 1 of 5 min on the GPU beside
    # s's first; t: 1 hour here beside s's last.
    s_history = _timed([(t0, t0 + 600), (t0 + 600, t0 + 1200), (t0 + 3600, t0 + 7200),
                        (t0 + 7200, t0 + 10_800)])  # fmt: skip
    cards = [
        _trained(base, "t", 0.93, 10.0, "baseline", device=cpu,
                 history=_timed([(t0 + 9000, t0 + 12_600)])),
        _trained(base, "s", 0.88, 1.0, "kd", device=f"{gpu}: epochs 1-2; {cpu}: epochs 3-4",
                 history=s_history),
        _trained(base, "g", 0.87, 1.0, "baseline", device=gpu,
                 history=_timed([(t0 + 300, t0 + 600)])),
    ]  # fmt: skip
    text = render_report(cards, "zoo")
    assert f"Trained on: (a) {cpu}; (b) {gpu}. Variants" in text
    assert "Elapsed training time: 2 h 50 min (2 h 30 min on (a), 0 h 20 min on (b))," in text
    training = text.split("## Training")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0]: line for line in training.splitlines() if line.startswith("| ")}
    assert rows["| s"].endswith("| b 1-2, a 3-4 |")
    assert rows["| t"].endswith("| a |") and rows["| g"].endswith("| b |")
    # one device: no letters, no column
    plain = render_report([c.model_copy(update={"training": c.training.model_copy(
        update={"device": cpu})}) for c in cards], "zoo")  # fmt: skip
    assert f"Trained on: {cpu}. Variants" in plain and "| a |" not in plain
    # lanes of one and two threads on one machine: one machine
    lanes = [c.model_copy(update={"training": c.training.model_copy(
        update={"device": f"cpu (AMD EPYC, 2 cores, {n})"})}) for c, n in zip(
        cards, ("1 thread", "2 threads", "1 thread"), strict=True)]  # fmt: skip
    text = render_report(lanes, "zoo")
    assert f"Trained on: {cpu}. Variants" in text and "on (a)" not in text
