"""A teacher's top-1 answers on an evaluation split, computed once per teacher file, spec and split.

Every student's card measures its agreement with the teacher on the whole test split; without
this cache the teacher (the largest network of a zoo) runs over the split again for every card,
fp32 and int8 alike. Answers are kept in memory and, given a folder, on disk, so that the zoo's
lane processes share them. The key covers everything the answers depend on: the teacher file's
SHA-256, its input spec and the split's bytes; a changed teacher or split is a new key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from export.evaluate import logits_of, make_session
from service.contract.model_card import InputSpec, sha256_file
from service.contract.preprocess import normalize_uint8


def answers_key(teacher: Path, spec: InputSpec, images: np.ndarray) -> str:
    """Hex digest naming the answers of the file ``teacher`` preprocessed per ``spec`` on
    ``images`` (uint8 [N,H,W,C])."""
    h = hashlib.sha256()
    h.update(sha256_file(teacher).encode())
    h.update(spec.model_dump_json().encode())
    h.update(repr((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()[:32]


class TeacherAnswers:
    """Top-1 classes of teachers on evaluation splits, in memory and optionally under a folder."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._memo: dict[str, np.ndarray] = {}
        self.computed = 0  # how many times a teacher actually ran (the rest were cache hits)

    def top1(
        self,
        teacher: Path,
        spec: InputSpec,
        images: np.ndarray,
        *,
        provider: str = "CPUExecutionProvider",
        threads: int = 1,
    ) -> np.ndarray:
        """The teacher's top-1 class (int64 [N]) on each of ``images``."""
        key = answers_key(teacher, spec, images)
        if key in self._memo:
            return self._memo[key]
        answers = self._read(key, len(images))
        if answers is None:
            session = make_session(teacher, provider, threads)
            answers = logits_of(session, normalize_uint8(images, spec)).argmax(axis=1)
            answers = answers.astype(np.int64)
            self.computed += 1
            self._write(key, answers)
        self._memo[key] = answers
        return answers

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.npy"

    def _read(self, key: str, n: int) -> np.ndarray | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            answers = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # a torn or foreign file: compute it again
            return None
        if answers.shape != (n,) or answers.dtype != np.int64:
            return None
        return answers

    def _write(self, key: str, answers: np.ndarray) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, answers, allow_pickle=False)
        tmp.replace(path)  # atomic: a concurrent lane reads the old state or the whole file
