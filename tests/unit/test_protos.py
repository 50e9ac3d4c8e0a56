"""The committed Python stubs are exactly what the one generator command makes from the .proto.

When this fails, run `python protos/generate.py` and commit the regenerated files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import importlib.util

from tests import support


def _load_generator():
    """protos/generate.py is a development script, not part of the installed package."""
    spec = importlib.util.spec_from_file_location("protos_generate", support.ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_generator = _load_generator()
PROTO_ROOT, generate, proto_files = _generator.PROTO_ROOT, _generator.generate, _generator.proto_files

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every generated stub under root."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def out_of_step(expected: dict[str, bytes], committed: dict[str, bytes]) -> list[str]:
    """Files missing, extra, or differing between a fresh generation and the committed tree."""
    names = sorted(set(expected) | set(committed))
    return [name for name in names if expected.get(name) != committed.get(name)]


def test_there_is_a_proto_to_generate_from():
    assert [p.relative_to(PROTO_ROOT).as_posix() for p in proto_files()] == ["tollway/v1/completion.proto"]


def test_committed_stubs_match_the_proto(tmp_path: Path):
    generate(out_dir=tmp_path)
    fresh = generated_files(tmp_path)
    assert sorted(fresh) == [
        "tollway/v1/completion_pb2.py",
        "tollway/v1/completion_pb2.pyi",
        "tollway/v1/completion_pb2_grpc.py",
    ]
    stale = out_of_step(fresh, generated_files(PROTO_ROOT))
    assert stale == [], f"stubs out of step with the .proto: {stale}; run `python protos/generate.py`"


def test_a_changed_proto_is_detected_as_out_of_step(tmp_path: Path):
    """The comparison above is sensitive: one added field makes the stubs differ."""
    changed_root = tmp_path / "protos"
    shutil.copytree(PROTO_ROOT, changed_root, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    proto = changed_root / "tollway" / "v1" / "completion.proto"
    text = proto.read_text(encoding="utf-8")
    marker = "message ListModelsRequest {}"
    assert marker in text
    proto.write_text(text.replace(marker, "message ListModelsRequest {\n  string filter = 1;\n}"), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    generate(out_dir=out, root=changed_root)
    assert out_of_step(generated_files(out), generated_files(PROTO_ROOT)) == [
        "tollway/v1/completion_pb2.py",
        "tollway/v1/completion_pb2.pyi",
    ]
