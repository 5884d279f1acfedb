"""``python -m loadtest.hotpath_ab``: the service end to end against variants of its hot path.

A special path (JPEGs through libjpeg-turbo instead of Pillow) is worth its code only while it
measurably beats the plain alternative on the current service; a candidate (orjson for answers)
only once it does; a change (any git revision) must not be slower. So this runs the same model
end to end under each variant, interleaved round by round (the machine's load
drifts), and prints served img/s at c=64 and p50 at c=1 per variant with the range over rounds
and the ratio to ``current`` measured in the same round.

Variants (``--variants``):
  current             the service as it is
  pillow-jpeg         JPEGs decoded by Pillow instead of simplejpeg (service.inputs.fastjpeg)
  orjson              answers encoded with orjson instead of the stdlib json (if installed)
  git:REV             the service as it was at git revision REV (a temporary worktree)

``python -m loadtest.hotpath_ab serve VARIANT [service options]`` runs one variant (used by the
harness; a variant patches the service in this process before uvicorn starts, so every variant runs
with one worker process).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np

from loadtest.cli import positive_float, positive_int, run_cli
from loadtest.served_report import Row, machine
from loadtest.served_vs_raw import Server, pick_model
from service.contract.model_card import ModelCard

VARIANTS = ("current", "pillow-jpeg", "orjson")
DEFAULT_JPEG = Path("../shared/datasets/cifar10/test/cat/0000.jpg")


def apply(variant: str) -> None:
    """Patch this process's service to ``variant`` (before uvicorn imports the app)."""
    if variant == "current":
        return
    if variant == "pillow-jpeg":
        from service.inputs import fastjpeg

        fastjpeg.simplejpeg = None
    elif variant == "orjson":
        import orjson

        from service.http import responses

        # (orjson is optional: typed where installed, Any where not; the cast suits both)
        responses.dump_json = cast(Any, orjson.dumps)
    else:
        raise SystemExit(f"error: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def variant_problem(variant: str) -> str | None:
    """Why ``variant`` cannot run here (not a variant, no orjson, no such revision), or None."""
    if variant.startswith("git:"):
        rev = variant[4:]
        found = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            capture_output=True,
            check=False,
        )
        return None if rev and found.returncode == 0 else f"{variant}: no such git revision"
    if variant not in VARIANTS:
        return f"unknown variant {variant!r}; known: {', '.join(VARIANTS)} or git:REV"
    if variant == "orjson" and importlib.util.find_spec("orjson") is None:
        return "variant orjson: orjson is not installed"
    return None


def serve(argv: list[str]) -> int:
    """``serve VARIANT [service options]``: run the service with one variant applied."""
    variant, rest = argv[0], argv[1:]
    apply(variant)
    from service.__main__ import main as service_main

    return service_main(rest)


def multipart_payload(image: bytes) -> tuple[str, bytes]:
    """(content type, body) of a multipart form with one ``file`` field."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="x.jpg"\r\n'
            f"content-type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return f"multipart/form-data; boundary={boundary}", body


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A temporary git worktree of ``rev``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="rocketserve-ab-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], check=False)


def measure(
    variant: str,
    repo: Path,
    card: ModelCard,
    payload: tuple[str, bytes],
    seconds: float,
    trees: dict[str, Path],
) -> tuple[Row, Row]:
    """(c=64 row, c=1 row) of one variant."""
    if variant.startswith("git:"):
        launcher, cwd = [sys.executable, "-m", "service"], trees[variant]
    else:
        launcher, cwd = [sys.executable, "-m", "loadtest.hotpath_ab", "serve", variant], None
    # One process for every variant: a variant patches the service in the process it starts.
    env = {"ROCKETSERVE_WORKERS": "1"}
    server = Server(repo, card, env, variant, launcher=launcher, cwd=cwd, payload=payload)
    try:
        server.wait_ready()
        return server.measure(64, seconds), server.measure(1, seconds)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the A/B rounds and print the table."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    p = argparse.ArgumentParser(prog="python -m loadtest.hotpath_ab", description=__doc__)
    p.add_argument("--model-repository", type=Path, default=Path("models"))
    p.add_argument("--model", default="cifar10-kd-wrn-16-1-int8")
    p.add_argument(
        "--variants",
        help=f"comma-separated (default: those of {', '.join(VARIANTS)} that run here)",
    )
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--seconds", type=positive_float, default=4.0, help="measured seconds per point")
    p.add_argument("--image", type=Path, default=DEFAULT_JPEG, help="the JPEG every request sends")
    args = p.parse_args(argv)
    if args.variants is None:  # orjson only where it is installed
        variants = [v for v in VARIANTS if variant_problem(v) is None]
    else:
        variants = [v for v in args.variants.split(",") if v]
    if "current" not in variants:
        variants.insert(0, "current")
    problems = [why for why in map(variant_problem, variants) if why]
    if problems:
        p.error(f"--variants: {'; '.join(problems)}")
    # Everything a round needs is read before the first server starts.
    payload = multipart_payload(args.image.read_bytes())
    card, _ = pick_model(args.model_repository, args.model)
    results: dict[str, list[tuple[Row, Row]]] = {v: [] for v in variants}
    with contextlib.ExitStack() as stack:
        trees = {v: stack.enter_context(worktree(v[4:])) for v in variants if v.startswith("git:")}
        for r in range(args.rounds):
            for v in variants:
                results[v].append(
                    measure(v, args.model_repository, card, payload, args.seconds, trees)
                )
                hi, lo = results[v][-1]
                print(
                    f"round {r + 1} {v:<18} c=64 {hi.images_per_s:8.0f} img/s  "
                    f"c=1 p50 {lo.p50_ms:6.3f} ms  errors {hi.errors + lo.errors}",
                    flush=True,
                )
    print(f"\nmachine: {machine()}")
    print(f"model: {card.name}; one multipart JPEG ({args.image.name}) per request")
    print(
        f"{'variant':<18}{'c=64 img/s':>22}{'vs current':>16}{'c=1 p50 ms':>20}{'vs current':>16}"
    )
    base = results["current"]
    for v in variants:
        rows = results[v]
        tput = [hi.images_per_s for hi, _ in rows]
        p50 = [lo.p50_ms for _, lo in rows]
        t_ratio = [
            hi.images_per_s / b[0].images_per_s for (hi, _), b in zip(rows, base, strict=True)
        ]
        l_ratio = [lo.p50_ms / b[1].p50_ms for (_, lo), b in zip(rows, base, strict=True)]
        print(
            f"{v:<18}{_range(tput, '.0f'):>22}{_range(t_ratio, '.2f'):>16}"
            f"{_range(p50, '.3f'):>20}{_range(l_ratio, '.2f'):>16}"
        )
    return 0


def _range(values: list[float], fmt: str) -> str:
    lo, hi = float(np.min(values)), float(np.max(values))
    return f"{lo:{fmt}}-{hi:{fmt}}"


if __name__ == "__main__":
    sys.exit(run_cli(main))
