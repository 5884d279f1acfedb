"""REPORT.md's studies: every method on one student, Rocket's ablations, deep vs shallow, MobileNet,
int8 against fp32.

Each study reads the cards of a zoo (served or not) and renders a table plus a reading that says,
for each comparison, whether the gap is beyond test-set noise (``export.noise``). A gap within
noise with one seed per side says so rather than being read as a result.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from export.noise import Runs, compare, gap, group_runs
from service.contract.model_card import ModelCard, ProfileRow

# Zhou et al., "Rocket Launching: A Universal and Efficient Framework for Training
# Well-performing Light Net", AAAI 2018, Table 1: CIFAR-10 test error (%), light net WRN-16-1,
# booster WRN-40-1. The paper reports no FitNets or SNN-MIMIC figure for this pair.
PAPER_ERROR = {"baseline": 8.77, "kd": 8.39, "rocket": 7.87, "rocket-kd": 7.52}
PAPER_BOOSTER_ERROR = 6.58
PAPER_SETTING = ("cifar10", "wrn-16-1")

METHOD_TEXT = {
    "baseline": "alone",
    "kd": "KD",
    "fitnet": "FitNets (hint stage, then KD)",
    "fitnet-one-stage": "FitNets, one stage (hint + CE)",
    "mimic": "SNN-MIMIC",
    "rocket": "Rocket",
    "rocket-kd": "Rocket+KD",
}
METHODS_STUDIED = tuple(METHOD_TEXT)
ROCKET_METHODS = ("rocket", "rocket-kd")
# The comparisons the method table reads, as steps from one method to a (claimed) better one.
METHOD_STEPS = (
    ("baseline", "kd"),
    ("baseline", "fitnet"),
    ("baseline", "mimic"),
    ("baseline", "rocket"),
    ("kd", "rocket"),
    ("rocket", "rocket-kd"),
    ("kd", "rocket-kd"),
    ("baseline", "rocket-kd"),
)
ABLATIONS = ("no gradient block", "no sharing", "no joint training")


def points_below(gap: float) -> str:
    """``gap`` points (how far a network trails another) in words: "2.50 points below", or
    "1.20 points above" where it leads."""
    return f"{abs(gap):.2f} points {'below' if gap >= 0 else 'above'}"


def _row(card: ModelCard, batch_size: int) -> ProfileRow | None:
    return card.profile.row(batch_size)


def trained_networks(cards: Sequence[ModelCard]) -> list[ModelCard]:
    """The networks as trained (fp32, not a converted variant)."""
    return [c for c in cards if c.derived_from is None and c.precision == "fp32"]


def ablation_of(card: ModelCard) -> str | None:
    """Which Rocket ablation a card's training config is, or None for Rocket as published."""
    if card.training.method not in ROCKET_METHODS:
        return None
    cfg = card.training.config
    if cfg.get("gradient_block") is False:
        return "no gradient block"
    if cfg.get("sharing") == "none":
        return "no sharing"
    if cfg.get("joint") is False:
        return "no joint training"
    return None


def _by(cards: Sequence[ModelCard], key: str) -> dict[tuple[str, float], list[ModelCard]]:
    """Cards grouped by (method or ablation label, epochs)."""
    groups: dict[tuple[str, float], list[ModelCard]] = {}
    for c in cards:
        label = c.training.method if key == "method" else (ablation_of(c) or "reference")
        groups.setdefault((label, c.training.epochs), []).append(c)
    return groups


def _student_arch(cards: Sequence[ModelCard]) -> str | None:
    """The architecture most methods were compared on (the paper's WRN-16-1 when present)."""
    counts: dict[str, set[str]] = {}
    for c in trained_networks(cards):
        if c.training.method in METHODS_STUDIED and ablation_of(c) is None:
            counts.setdefault(c.training.architecture, set()).add(c.training.method)
    candidates = {a: m for a, m in counts.items() if len(m) >= 2 and "baseline" in m}
    if not candidates:
        return None
    if PAPER_SETTING[1] in candidates:
        return PAPER_SETTING[1]
    return max(sorted(candidates), key=lambda a: len(candidates[a]))


def render_methods(cards: Sequence[ModelCard], teacher: ModelCard | None) -> list[str]:
    """One student architecture trained by every method at one budget, beside the paper."""
    arch = _student_arch(cards)
    if arch is None:
        return []
    pool = [
        c for c in trained_networks(cards)
        if c.training.architecture == arch and ablation_of(c) is None
        and c.training.method in METHODS_STUDIED
    ]  # fmt: skip
    budget = max(c.training.epochs for c in pool if c.training.method == "baseline")
    runs = {
        method: group_runs(group)
        for (method, epochs), group in _by(pool, "method").items()
        if epochs == budget
    }
    dataset = pool[0].metrics.dataset
    paper = (dataset, arch) == PAPER_SETTING
    lines = [
        "## Every method on one student",
        "",
        f"{arch} trained at the same budget ({budget:g} epochs, same recipe) by each method"
        + (" beside the paper's figures (Zhou et al., AAAI 2018, 200 epochs)" if paper else "")
        + f". Top-1 on the {pool[0].metrics.n:,} test images, measured on the exported file; "
        "with several seeds, the mean and each seed. Agreement = share of the test split on "
        "which the student's top-1 equals the teacher's. ECE = expected calibration error of "
        "the softmax scores (15 bins; lower: a score says more truly how often it is right).",
        "",
        "| method | seeds | top-1 % (mean) | per seed | error % | paper error % "
        "| agreement with teacher % | ECE % |",
        "|---|--:|--:|---|--:|--:|--:|--:|",
    ]
    for method in METHODS_STUDIED:
        if method not in runs:
            continue
        r = runs[method]
        agree = _mean_percent([c.metrics.teacher_agreement for c in r.cards])
        ece = _mean_percent([c.metrics.ece for c in r.cards])
        ref = f"{PAPER_ERROR[method]:.2f}" if paper and method in PAPER_ERROR else "-"
        lines.append(
            f"| {METHOD_TEXT[method]} | {len(r.cards)} | {r.top1 * 100:.2f} | {r.per_seed()} "
            f"| {(1 - r.top1) * 100:.2f} | {ref} | {agree} | {ece} |"
        )
    lines += _companion_rows(runs, paper)
    if teacher is not None:
        lines.append(
            f"| teacher {teacher.name} ({teacher.training.architecture}, "
            f"{teacher.training.epochs:g} epochs) | 1 | {teacher.metrics.top1 * 100:.2f} | - "
            f"| {(1 - teacher.metrics.top1) * 100:.2f} | - | 100.00 "
            f"| {_mean_percent([teacher.metrics.ece])} |"
        )
    lines += ["", "Reading, step by step:", ""]
    for low, high in METHOD_STEPS:
        if low in runs and high in runs:
            claim = (
                f"; paper {PAPER_ERROR[low] - PAPER_ERROR[high]:+.2f}"
                if paper and low in PAPER_ERROR and high in PAPER_ERROR
                else ""
            )
            lines.append(
                f"- {METHOD_TEXT[low]} -> {METHOD_TEXT[high]}: "
                f"{compare(runs[low], runs[high])}{claim}."
            )
    return [*lines, ""]


def _mean_percent(values: Sequence[float | None]) -> str:
    """The mean of the values given (fractions) in percent, or "-" when none is."""
    known = [v for v in values if v is not None]
    return f"{statistics.fmean(known) * 100:.2f}" if known else "-"


def _companion_rows(runs: dict[str, Runs], paper: bool) -> list[str]:
    """Rows for the boosters Rocket trained beside its light nets (not served)."""
    lines = []
    for method in ROCKET_METHODS:
        r = runs.get(method)
        if r is None:
            continue
        tops = [
            c.training.companions["booster"] for c in r.cards if "booster" in c.training.companions
        ]
        if not tops:
            continue
        mean = statistics.fmean(tops)
        booster = r.cards[0].training.config.get("booster", "booster")
        ref = f"{PAPER_BOOSTER_ERROR:.2f}" if paper else "-"
        lines.append(
            f"| booster {booster} of {METHOD_TEXT[method]} (PyTorch, not served) | {len(tops)} "
            f"| {mean * 100:.2f} | - | {(1 - mean) * 100:.2f} | {ref} | - | - |"
        )
    return lines


def render_ablation(cards: Sequence[ModelCard]) -> list[str]:
    """Rocket without each of its parts, against Rocket at the same (shorter) budget."""
    rocket = [c for c in trained_networks(cards) if c.training.method == "rocket"]
    groups = _by(rocket, "ablation")
    budgets = sorted({e for (label, e) in groups if label != "reference"})
    lines: list[str] = []
    for budget in budgets:
        reference = groups.get(("reference", budget))
        if reference is None:
            continue
        ref = group_runs(reference)
        arch = ref.cards[0].training.architecture
        booster = ref.cards[0].training.config.get("booster", "booster")
        lines += [
            f"## Rocket ablation ({budget:g} epochs)",
            "",
            f"Light net {arch}, booster {booster}; each row removes one part of Rocket and is "
            f"compared with Rocket itself rerun at the same {budget:g}-epoch budget.",
            "",
            "| variant | seeds | light net top-1 % | per seed | booster top-1 % (PyTorch) "
            "| against Rocket |",
            "|---|--:|--:|---|--:|---|",
            _ablation_row("Rocket (reference)", ref, "-"),
        ]
        for label in ABLATIONS:
            if (label, budget) in groups:
                r = group_runs(groups[(label, budget)])
                lines.append(_ablation_row(label, r, compare(ref, r)))
        lines.append("")
    return lines


def _ablation_row(label: str, r: Runs, against: str) -> str:
    boosters = [
        c.training.companions["booster"] for c in r.cards if "booster" in c.training.companions
    ]
    booster = f"{statistics.fmean(boosters) * 100:.2f}" if boosters else "-"
    return (
        f"| {label} | {len(r.cards)} | {r.top1 * 100:.2f} | {r.per_seed()} | {booster} "
        f"| {against} |"
    )


def _speed(card: ModelCard) -> str:
    b1, b32 = _row(card, 1), _row(card, 32)
    p50 = "n/a" if b1 is None else f"{b1.p50_ms:.3f}"
    tput = "n/a" if b32 is None else f"{b32.images_per_s:,.0f}"
    return f"{p50} | {tput}"


def _net_rows(cards: Sequence[ModelCard]) -> list[str]:
    rows = []
    for c in sorted(cards, key=lambda c: (c.training.architecture, c.training.method, c.name)):
        method = METHOD_TEXT.get(c.training.method, c.training.method)
        rows.append(
            f"| {c.name} | {c.training.architecture} | {method} "
            f"| {c.training.epochs:g} | {c.params / 1e3:,.0f}k | {c.macs / 1e6:,.1f}M "
            f"| {c.metrics.top1 * 100:.2f} | {_speed(c)} |"
        )
    return rows


_NET_HEADER = [
    "| model | architecture | method | epochs | params | MACs | top-1 % | p50 ms b1 | img/s b32 |",
    "|---|---|---|--:|--:|--:|--:|--:|--:|",
]


def _reading(
    cards: Sequence[ModelCard], low: tuple[str, str], high: tuple[str, str], label: str
) -> str | None:
    """'- label: +0.85 points (...)' from configuration ``low`` to ``high`` (each an
    architecture and a method, every seed of it) at the largest training budget both have."""

    def runs(arch: str, method: str) -> list[ModelCard]:
        return [c for c in cards if c.training.architecture == arch and c.training.method == method]

    lows, highs = runs(*low), runs(*high)
    budgets = {c.training.epochs for c in lows} & {c.training.epochs for c in highs}
    if not budgets:
        return None
    budget = max(budgets)
    text = compare(
        group_runs([c for c in lows if c.training.epochs == budget]),
        group_runs([c for c in highs if c.training.epochs == budget]),
    )
    return f"- {label}: {text}."


def _family_study(
    cards: Sequence[ModelCard], prefix: str, methods: tuple[str, str], title: str, intro: str
) -> tuple[list[str], list[ModelCard]]:
    """A family (architectures starting with ``prefix``) trained by two methods, beside the deep
    student trained the same two ways: the table and its readings (each architecture's two
    methods, then each method's family architecture against the deep student), and the
    family's cards."""
    nets = trained_networks(cards)
    family = [c for c in nets if c.training.architecture.startswith(prefix)]
    if not family:
        return [], []
    deep_arch = _student_arch(cards)
    # every seed of the deep student, as the readings below average them
    deep = [
        c for c in nets if c.training.architecture == deep_arch and c.training.method in methods
    ]
    lines = [f"## {title}", "", intro, "", *_NET_HEADER, *_net_rows(family + deep), ""]
    low, high = methods
    how = f"{METHOD_TEXT[low]} -> {METHOD_TEXT[high]}"
    readings = [
        _reading(nets, (arch, low), (arch, high), f"{arch}: {how}")
        for arch in sorted({c.training.architecture for c in family + deep})
    ]
    for method in methods if deep_arch is not None else ():
        for arch in sorted({c.training.architecture for c in family}):
            label = f"{METHOD_TEXT[method]}: {arch} -> {deep_arch}"
            readings.append(_reading(nets, (arch, method), (str(deep_arch), method), label))
    return lines + [r for r in readings if r], family


def render_depth(cards: Sequence[ModelCard]) -> list[str]:
    """Deep vs shallow: shallow, wide nets alone and by SNN-MIMIC beside the deep students."""
    lines, shallow = _family_study(
        cards,
        "shallow",
        ("baseline", "mimic"),
        "Deep vs shallow (SNN-MIMIC)",
        "Can a shallow net learn what a deep one knows (Ba & Caruana, NeurIPS 2014)? Shallow, wide "
        "networks (one or two convolutions) trained on the labels alone and by regressing the "
        "teacher's logits, beside the deep student of the same methods. Latency: ONNX Runtime, "
        "batch 1 p50 and batch 32 throughput on the exported file, as in the main table.",
    )
    return [*lines, ""] if shallow else []


def render_mobilenet(cards: Sequence[ModelCard]) -> list[str]:
    """Hard compression: the MobileNet-style student alone and with KD, beside the WRN students."""
    lines, mobile = _family_study(
        cards,
        "mobilenet",
        ("baseline", "kd"),
        "Hard compression: MobileNetV2",
        "Depthwise-separable MobileNetV2 trained alone and with KD from the teacher, beside the "
        "WRN student trained the same ways.",
    )
    return [*lines, ""] if mobile else []


def render_int8(cards: Sequence[ModelCard]) -> list[str]:
    """Each network's int8 file against its fp32 one: what quantisation costs in top-1 (read
    against test-set noise, paired: the same images) and buys in speed and size."""
    by_name = {c.name: c for c in cards}
    pairs = sorted(
        ((by_name[c.derived_from], c) for c in cards
         if c.precision == "int8" and c.derived_from in by_name),
        key=lambda pair: pair[0].name,
    )  # fmt: skip
    if not pairs:
        return []
    lines = [
        "## int8 against fp32",
        "",
        "Each network's int8 file (static QDQ, calibrated on training images) beside the fp32 "
        "file it was converted from, both measured above on this machine in the same rounds. "
        "Change: int8's top-1 minus fp32's, beyond or within test-set noise (both files are "
        "read on the same images). Speed-up: fp32's time over int8's (batch 1 p50) and int8's "
        "images/s over fp32's (batch 32); above 1x int8 is faster.",
        "",
        "| network | top-1 % fp32 | top-1 % int8 | change (points) | p50 ms b1 fp32 | int8 "
        "| speed-up b1 | img/s b32 fp32 | int8 | speed-up b32 | size fp32 / int8 |",
        "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for fp32, int8 in pairs:
        g = gap(Runs((fp32,)), Runs((int8,)))
        b1 = [_row(c, 1) for c in (fp32, int8)]
        b32 = [_row(c, 32) for c in (fp32, int8)]
        p50 = [f"{r.p50_ms:.3f}" if r else "n/a" for r in b1]
        tput = [f"{r.images_per_s:,.0f}" if r else "n/a" for r in b32]
        up1 = f"{b1[0].p50_ms / b1[1].p50_ms:.2f}x" if b1[0] and b1[1] else "n/a"
        up32 = f"{b32[1].images_per_s / b32[0].images_per_s:.2f}x" if b32[0] and b32[1] else "n/a"
        lines.append(
            f"| {fp32.name} | {fp32.metrics.top1 * 100:.2f} | {int8.metrics.top1 * 100:.2f} "
            f"| {g.points:+.2f} ({'beyond' if g.beyond_noise else 'within'} noise: 2 s.e. "
            f"{g.two_se:.2f}, {'paired' if g.paired else 'unpaired'}) "
            f"| {p50[0]} | {p50[1]} | {up1} | {tput[0]} | {tput[1]} | {up32} "
            f"| {fp32.size_bytes / int8.size_bytes:.1f}x |"
        )
    return [*lines, ""]
