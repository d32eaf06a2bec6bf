"""Fixtures for prompt-set tests: the shared benchmark copies (read in place, never copied) and tiny files."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_file():
    """Path of a file in shared/data; skips (with the reason) when that checkout is absent."""

    def locate(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_file():
            pytest.skip(f"{path} is absent: the shared benchmark copies are not checked out next to this repo")
        return path

    return locate


@pytest.fixture
def write_csv(tmp_path: Path):
    """Write a small CSV (header + rows) into tmp_path and return its path."""

    def write(name: str, header: str, *rows: str) -> Path:
        path = tmp_path / name
        path.write_text("\n".join([header, *rows]) + "\n")
        return path

    return write
