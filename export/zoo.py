"""The whole offline stage: train a teacher and one student per method, export, measure, publish."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from export.adopt import adopt, recipe_changes, source_card
from export.evaluate import default_threads, machine_description, pick_provider
from export.gpu_sharing import gpu_sharing_note, mps_running
from export.lanes import follow_lane_threads, run_lanes
from export.onnx_export import ExportError, export_with_parity
from export.quantize import make_variant
from export.report import write_report
from export.repository import (
    ArtifactInfo,
    EvalData,
    ProfileSettings,
    load_cards,
    publish,
    training_info,
)
from export.teacher_answers import TeacherAnswers
from export.zoo_config import (
    ZOO_KEYS,
    ZooError,
    config_path,
    load_zoo_config,
    model_name,
    needs_teacher,
    prerequisites,
    second_seed_reason,
)
from export.zoo_plan_record import hm
from export.zoo_progress import record_config
from service.contract.model_card import (
    InputSpec,
    ModelCard,
    ModelRepositoryError,
    TrainingInfo,
    sha256_file,
)


@dataclass(frozen=True)
class ZooOptions:
    """Command-line overrides that cut a zoo down (tests, smoke runs) or point it at data."""

    data_dir: str | None = None
    max_epochs: float | None = None
    max_train_images: int | None = None
    profile_runs: int | None = None
    threads: int | None = None
    provider: str | None = None
    only: tuple[str, ...] = ()
    work_dir: Path | None = None
    # Continue an interrupted zoo: training picks up from each run's last epoch checkpoint and an
    # entry whose models the repository already holds is not exported or published again.
    resume: bool = False
    # Students in this many parallel processes after the teacher (export/lanes.py); 1: in turn.
    lanes: int = 1
    torch_threads: int | None = None  # overrides the config's torch_threads
    report: bool = True  # write REPORT.md and pareto.png at the end (a lane's child does not)
    config_file: Path | None = None  # the zoo YAML, when not the packaged one (lanes pass it on)
    # A model repository (such as the committed models/) whose networks trained to this zoo's
    # recipes are adopted instead of trained again, when the work folder lacks them (resume only).
    adopt_from: Path | None = None
    # Train every entry and stop there: no export, measurement or publishing (an accelerator
    # machine trains; the serving machine resumes the zoo, finds each run finished, and exports,
    # measures and publishes there). A conditional second seed trains unconditionally, since
    # whether it is due is read from its first seed's card, which only the serving machine makes.
    train_only: bool = False


@dataclass
class ZooResult:
    """What a zoo run produced."""

    cards: list[ModelCard] = field(default_factory=list)
    report: Path | None = None
    pareto: Path | None = None
    wall_time_s: float = 0.0


def _training_config(
    entry: dict[str, Any], config: dict[str, Any], opts: ZooOptions, out_dir: Path
) -> dict[str, Any]:
    cfg = {**config.get("defaults", {}), **{k: v for k, v in entry.items() if k not in ZOO_KEYS}}
    cfg.update(
        dataset=config["dataset"],
        data_dir=opts.data_dir if opts.data_dir is not None else config.get("data_dir"),
        seed=cfg.get("seed", config.get("seed", 0)),
        out_dir=str(out_dir),
    )
    if opts.max_epochs is not None:
        epochs = float(cfg.get("epochs", opts.max_epochs))
        cfg["epochs"] = min(epochs, opts.max_epochs)
        if cfg.get("hint_epochs") is not None and cfg["epochs"] < epochs:
            # FitNets' stage 1 is a part of the run: it keeps its share of the capped one.
            cfg["hint_epochs"] = float(cfg["hint_epochs"]) * cfg["epochs"] / epochs
    if opts.max_train_images is not None:
        current = cfg.get("max_train_images") or opts.max_train_images
        cfg["max_train_images"] = min(int(current), opts.max_train_images)
    if opts.resume:
        cfg["resume"] = True
    return cfg


def check_options(opts: ZooOptions) -> None:
    """Refuse options no zoo can run with (passed programmatically, past the command's checks)."""
    counts = {
        "lanes": opts.lanes,
        "profile_runs": opts.profile_runs,
        "torch_threads": opts.torch_threads,
        "max_train_images": opts.max_train_images,
    }
    for key, value in counts.items():
        if value is not None and value < 1:
            raise ZooError(f"{key} must be at least 1, not {value}")
    if opts.threads is not None and opts.threads < 0:
        raise ZooError(f"threads must be at least 0 (0: the config's), not {opts.threads}")
    if opts.max_epochs is not None and not (
        math.isfinite(opts.max_epochs) and opts.max_epochs >= 1
    ):
        raise ZooError(f"max_epochs must be a finite number >= 1, not {opts.max_epochs}")
    if opts.adopt_from is not None and not opts.resume:
        raise ZooError("--adopt-from continues a zoo: use it with --resume")
    if opts.adopt_from is not None and opts.train_only:
        raise ZooError("--adopt-from publishes what it adopts: it cannot go with --train-only")


def check_entries(config: dict[str, Any], opts: ZooOptions | None = None) -> None:
    """Resolve every entry's training config as its run will, so that a bad key fails now, not
    when the entry's turn comes hours later; and check that ``--only`` names entries."""
    from export.training import resolve_config

    opts = opts or ZooOptions()
    entries = [config["teacher"], *config["students"]]
    unknown = set(opts.only) - {str(e["name"]) for e in entries}
    if unknown:
        raise ZooError(f"--only names no zoo entry: {', '.join(sorted(unknown))}")
    for entry in entries:
        try:
            cfg = _training_config(entry, config, opts, Path(".work") / str(entry["name"]))
            resolve_config(cfg)  # the zoo's teacher stands as "zoo": a teacher all the same
        except (TypeError, ValueError) as exc:  # a ConfigError, or a cap of a non-number
            raise ZooError(f"zoo entry {entry['name']}: {exc}") from None


class Zoo:
    """Runs one zoo config end to end into a model repository."""

    def __init__(
        self,
        config: dict[str, Any],
        repo: Path,
        opts: ZooOptions,
        log: Callable[[str], None] = print,
    ) -> None:
        from export.data import load_dataset

        self.config, self.repo, self.opts, self.log = config, repo, opts, log
        check_options(opts)
        check_entries(config, opts)
        self.dataset = str(config["dataset"])
        data_dir = opts.data_dir if opts.data_dir is not None else config.get("data_dir")
        self.splits = load_dataset(self.dataset, data_dir)
        self.work = opts.work_dir or repo / ".work"
        profile = config.get("profile", {})
        runs = opts.profile_runs or int(profile.get("min_runs", 50))
        if runs < 1:
            raise ZooError(f"profile min_runs must be at least 1, not {runs}")
        self.settings = ProfileSettings(
            provider=pick_provider(opts.provider or profile.get("provider", "auto")),
            threads=opts.threads or int(profile.get("threads") or default_threads()),
            machine=machine_description(),
            min_runs=runs,
            min_seconds=0.0 if opts.profile_runs else float(profile.get("min_seconds", 0.3)),
        )
        # The teacher's answers on the test split are kept in the work folder: every lane's
        # child measures its students' agreement against them without running the teacher again.
        self.data = EvalData(
            dataset=self.dataset,
            images=self.splits.test_images,
            labels=self.splits.test_labels,
            answers=TeacherAnswers(self.work / "teacher-answers"),
        )
        self.teacher_name: str | None = None
        self.teacher_artifact: Path | None = None
        self.teacher_onnx: Path | None = None

    def model_name(self, entry: dict[str, Any]) -> str:
        """Repository name of an entry (:func:`model_name`)."""
        return model_name(self.dataset, str(entry["name"]))

    def _run_config(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The training config of an entry, its teacher the zoo's trained one."""
        cfg = _training_config(entry, self.config, self.opts, self.work / str(entry["name"]))
        if needs_teacher(cfg):
            if self.teacher_artifact is None:
                raise ZooError(f"{entry['name']}: teacher 'zoo' used before the teacher exists")
            cfg["teacher"] = str(self.teacher_artifact)
        return cfg

    def _train(self, cfg: dict[str, Any]) -> tuple[Any, Any, Path, dict[str, float]]:
        """Train an entry: its network, TrainedMeta, artifact path and companions' top-1."""
        from export.checkpoint import load_trained
        from export.training import run_training

        result = run_training(cfg)
        model, meta = load_trained(Path(result.artifact_path))
        companions = {
            name: float(load_trained(path)[1].test_top1 or 0.0)
            for name, path in sorted(result.extra_artifacts.items())
            if name != "teacher"  # a teacher is trained before, not with, the student
        }
        return model, meta, Path(result.artifact_path), companions

    def _adopt(self, entry: dict[str, Any], cfg: dict[str, Any]) -> ModelCard | None:
        """Adopt the entry's network from ``--adopt-from`` when its run is not finished here and
        the source holds it trained to the same recipe (export/adopt.py); else None."""
        from export.checkpoint import ArtifactError
        from export.training import resolve_config
        from export.training.config import fingerprint
        from export.training.result import read_finished

        source = self.opts.adopt_from
        if source is None:
            return None
        resolved = resolve_config(cfg)
        out_dir, fp = Path(resolved["out_dir"]), fingerprint(resolved)
        if read_finished(out_dir, fp) is not None:
            return None  # finished here: nothing to adopt
        name = self.model_name(entry)
        try:
            card = source_card(source, name)
        except ModelRepositoryError as exc:
            self.log(f"[{name}] not adopted from {source}: {exc}")
            return None
        if card is None:
            return None
        teacher = self.teacher_name if needs_teacher(entry) else None
        changes = recipe_changes(card, resolved, teacher)
        if teacher is not None and not self._same_teacher(source):
            changes.append(f"teacher: the zoo's {teacher} is not the one {source} serves")
        if changes:
            self.log(f"[{name}] not adopted from {source}: trained otherwise: {'; '.join(changes)}")
            return None
        variants = [str(v) for v in entry.get("variants", []) or []]
        try:
            adopted = adopt(
                card,
                source,
                out_dir,
                fp,
                self.data,
                self.settings,
                self.repo,
                variants,
                self.teacher_name,
            )
        except (ExportError, ArtifactError, ModelRepositoryError, OSError) as exc:
            self.log(f"[{name}] not adopted from {source}: {exc}")
            return None
        t = card.training
        self.log(
            f"[{name}] adopted from {source / name} (v{card.version}, not trained again): "
            f"{t.epochs:g} epochs, test top-1 {card.metrics.top1:.2%}, "
            f"{hm(t.wall_time_s / 3600)} (h:mm) of training"
        )
        return adopted

    def _same_teacher(self, source: Path) -> bool:
        """Whether the zoo's teacher is the very network ``source`` serves under its name (its
        students were distilled from that one, not from a teacher retrained here)."""
        try:
            served = source_card(source, str(self.teacher_name))
        except ModelRepositoryError:
            return False
        return (
            served is not None
            and self.teacher_onnx is not None
            and self.teacher_onnx.is_file()
            and sha256_file(self.teacher_onnx) == served.sha256
        )

    def _card_training(
        self, meta: Any, entry: dict[str, Any], companions: dict[str, float]
    ) -> TrainingInfo:
        info = training_info(meta)
        config = {k: v for k, v in info.config.items() if k not in ("out_dir", "resume")}
        teacher = info.teacher
        if needs_teacher(entry):
            # The card names the served teacher model rather than a scratch checkpoint path.
            teacher = self.teacher_name
            config["teacher"] = self.teacher_name
        return info.model_copy(
            update={"teacher": teacher, "config": config, "companions": companions}
        )

    def run_entry(self, entry: dict[str, Any]) -> list[ModelCard]:
        """Train, export with parity, publish, then publish each variant (a conditional second
        seed only when its first seed's gap is within noise)."""
        name = self.model_name(entry)
        if entry.get("second_seed_of") and not self.opts.train_only:
            needed, why = second_seed_reason(
                entry, load_cards(self.repo), lambda n: self.model_name({"name": n})
            )
            self.log(f"[{name}] {'training' if needed else 'skipped'}: {why}")
            if not needed:
                return []
        t0 = time.perf_counter()
        cfg = self._run_config(entry)
        adopted = self._adopt(entry, cfg)
        model, meta, artifact, companions = self._train(cfg)
        if adopted is not None:
            companions = dict(adopted.training.companions)  # trained with it, not kept
        else:
            # A resumed run's time in this process is a part of its training time: log both.
            self.log(
                f"[{name}] trained: {meta.epochs:g} epochs, test top-1 {meta.test_top1:.2%}, "
                f"{hm(meta.wall_time_s / 3600)} (h:mm) of training in all "
                f"({time.perf_counter() - t0:.1f} s in this process)"
            )
        if entry is self.config["teacher"]:
            self.teacher_name, self.teacher_artifact = name, artifact
            self.teacher_onnx = self.work / str(entry["name"]) / "model.onnx"
        if self.opts.train_only:
            return []
        have = {c.name for c in load_cards(self.repo)} if self.opts.resume else set()
        wanted = [name] + [f"{name}-{p}" for p in entry.get("variants", []) or []]
        if all(n in have for n in wanted):
            self.log(f"[{name}] already published in {self.repo}: kept")
            return []
        spec = InputSpec.model_validate(meta.input_spec)
        onnx_path = self.work / str(entry["name"]) / "model.onnx"
        parity = export_with_parity(model, onnx_path, spec, self.splits.test_images)
        self.log(f"[{name}] {parity.summary()}")
        # Every student's agreement with the zoo's teacher, distilled from it or not: the method
        # table compares the students' fidelity, and the service's live agreement of a model whose
        # card names no served teacher defaults to the most accurate model, the teacher.
        teacher = None
        if entry is not self.config["teacher"] and self.teacher_onnx is not None:
            teacher = (self.teacher_onnx, spec)  # zoo students share the teacher's data spec
        info = ArtifactInfo(
            name=name,
            labels=tuple(meta.labels),
            input=spec,
            training=self._card_training(meta, entry, companions),
            teacher=teacher,
        )
        cards = [] if name in have else [self._publish(info, onnx_path)]
        for precision in entry.get("variants", []) or []:
            if f"{name}-{precision}" in have:
                continue
            variant = onnx_path.with_name(f"model-{precision}.onnx")
            make_variant(precision, onnx_path, variant, self.splits.train_images, spec)
            derived = replace(
                info, name=f"{name}-{precision}", precision=precision, derived_from=name
            )
            cards.append(self._publish(derived, variant))
        return cards

    def _lane_argv(self, name: str, threads: int) -> list[str]:
        """The command of a lane's child: this zoo cut to entry ``name``, resumed, no report."""
        o = self.opts
        argv = [sys.executable, "-m", "export", "zoo", "--dataset", self.dataset]
        argv += ["--out", str(self.repo), "--work-dir", str(self.work), "--resume"]
        argv += ["--lanes", "1", "--no-report", "--torch-threads", str(threads)]
        if o.train_only:
            argv.append("--train-only")
        options: list[tuple[str, object]] = [
            ("--config", o.config_file),
            ("--adopt-from", o.adopt_from),
            ("--data-dir", o.data_dir),
            ("--max-epochs", o.max_epochs),
            ("--max-train-images", o.max_train_images),
            ("--profile-runs", o.profile_runs),
            ("--threads", o.threads),
            ("--provider", o.provider),
        ]
        for flag, value in options:
            if value is not None:
                argv += [flag, str(value)]
        return [*argv, "--only", name]

    def _training_gpus(self, entries: list[dict[str, Any]]) -> int:
        """How many CUDA GPUs the lanes of ``entries`` train on (0: they train on the CPU)."""
        import torch

        devices = {
            str(_training_config(e, self.config, self.opts, self.work).get("device", "auto"))
            for e in entries
        }
        if devices <= {"cpu"} or not torch.cuda.is_available():
            return 0
        return torch.cuda.device_count()

    def _publish(self, info: ArtifactInfo, onnx_path: Path) -> ModelCard:
        card = publish(self.repo, info, onnx_path, self.data, self.settings)
        b1 = card.profile.rows[0]
        self.log(
            f"[{card.name}] v{card.version} {card.precision}: top-1 {card.metrics.top1:.2%}, "
            f"p50 {b1.p50_ms:.3f} ms at batch {b1.batch_size}, {card.size_bytes} bytes"
        )
        return card

    def run(self) -> ZooResult:
        """The teacher and every student (in lanes: each once its prerequisites are done);
        REPORT.md and pareto.png at the end."""
        import torch

        threads = torch.get_num_threads()
        wanted = self.opts.torch_threads or self.config.get("torch_threads")
        if wanted:
            torch.set_num_threads(int(wanted))
        try:
            with follow_lane_threads():  # in a lane's child: more cores once it is left alone
                return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> ZooResult:
        start = time.perf_counter()
        result = ZooResult()
        teacher = self.config["teacher"]
        entries = [teacher, *self.config["students"]]
        selected = set(self.opts.only)
        students = [e for e in entries[1:] if not selected or e["name"] in selected]
        # The teacher trains (or, resumed, is only loaded) when it is asked for or is a selected
        # student's prerequisite: one distils from it, or `teacher_first` puts it before them all.
        asked = not selected or teacher["name"] in selected
        with_teacher = asked or any(
            teacher["name"] in prerequisites(e, self.config) for e in students
        )
        chosen = [teacher] * with_teacher + students
        if self.opts.lanes > 1 and len(chosen) > 1:
            note = gpu_sharing_note(self.opts.lanes, self._training_gpus(chosen), mps_running())
            if note:
                self.log(note)
            names = [str(e["name"]) for e in chosen]
            after = {
                str(e["name"]): prerequisites(e, self.config, train_only=self.opts.train_only)
                for e in chosen
            }
            failed = run_lanes(
                self._lane_argv, names, self.opts.lanes, self.work, self.log, after=after
            )
            if failed:
                raise ZooError(f"{len(failed)} entries failed: " + "; ".join(failed))
        else:
            for entry in chosen:
                result.cards.extend(self.run_entry(entry))
        if not self.opts.report or self.opts.train_only:
            result.wall_time_s = time.perf_counter() - start
            return result
        cards = load_cards(self.repo)
        title = f"Model zoo: {self.dataset} ({len(cards)} models)"
        result.report, result.pareto = write_report(self.repo, cards, title)
        result.wall_time_s = time.perf_counter() - start
        self.log(f"wrote {result.report} and {result.pareto} in {result.wall_time_s:.1f}s")
        return result


def run_zoo(
    dataset: str,
    repo: Path,
    opts: ZooOptions | None = None,
    *,
    config_file: Path | None = None,
    log: Callable[[str], None] = print,
) -> ZooResult:
    """Run the zoo of ``dataset`` (or of ``config_file``) into ``repo``."""
    config = load_zoo_config(config_file or config_path(dataset))
    if config["dataset"] != dataset:
        raise ZooError(f"config is for dataset {config['dataset']!r}, not {dataset!r}")
    if repo.exists() and not repo.is_dir():
        raise ZooError(f"{repo}: is a file, not a folder for the model repository")
    opts = opts or ZooOptions()
    if config_file is not None and opts.config_file is None:
        opts = replace(opts, config_file=config_file)
    zoo = Zoo(config, repo, opts, log)  # refuses bad options and entries before writing anything
    repo.mkdir(parents=True, exist_ok=True)
    record_config(config_file or config_path(dataset), repo)  # the report's "not trained yet"
    return zoo.run()
