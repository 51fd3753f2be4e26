"""What a run may use (`SandboxLimits`), what it returns (`SandboxResult`), and
the checks that refuse, naming the field or file, inputs a run could not use whole."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Optional

_MAX_SECONDS = 7 * 24 * 3600  # a week: beyond any run, and within what poll() and rlimits take
_MAX_COUNT = 2**62            # bytes and counts: within what rlimits and cgroups take
_MAX_OPEN_FILES = 2**20       # the kernel's default ceiling on RLIMIT_NOFILE (fs.nr_open)
_MAX_FILES = 1024   # files given to a run (the working directory's tmpfs has 4096 inodes)
_NAME_MAX = 255     # bytes in a file name (Linux's NAME_MAX)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")  # tmpfs stores a file in whole pages


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. Defaults suit short test programs."""
    wall_seconds: float = 5.0
    cpu_seconds: float = 2.0          # the whole run's CPU time (each process's, without a cgroup)
    memory_bytes: int = 512 * 2**20   # each process's address space; the run's memory cgroup
    max_processes: int = 16           # processes + threads of the sandbox user
    max_file_bytes: int = 16 * 2**20  # any one file, stdout and stderr included
    disk_bytes: int = 64 * 2**20      # the working directory's tmpfs
    max_open_files: int = 64

    def __post_init__(self):
        # Checked here, naming the field, rather than failing later in a child whose
        # error would come back as "Exception occurred in preexec_fn".
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float":
                if (isinstance(value, bool) or not isinstance(value, (int, float))
                        or not 0 < value <= _MAX_SECONDS):  # refuses NaN and infinities too
                    raise ValueError(f"SandboxLimits.{field.name} must be a number of seconds in "
                                     f"(0, {_MAX_SECONDS}], got {value!r}")
            else:
                most = _MAX_OPEN_FILES if field.name == "max_open_files" else _MAX_COUNT
                if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
                    raise ValueError(f"SandboxLimits.{field.name} must be a whole number in "
                                     f"[1, {most}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    returncode: Optional[int]  # negative: killed by that signal (SIGKILL past the run's CPU limit or
                               # its memory cgroup's, SIGXCPU past one process's CPU limit)
    stdout: bytes
    stderr: bytes
    wall_seconds: float
    timed_out: bool            # the wall-clock limit was hit and the program killed
    isolated: bool             # namespaces and user switch were in force

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _checked_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, (str, bytes)) or not argv:
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    for index, arg in enumerate(argv):
        if not isinstance(arg, str) or "\0" in arg:
            raise ValueError(f"argv[{index}] must be a string without NUL bytes, got {arg!r}")
    if not os.path.isabs(argv[0]):
        raise ValueError(f"argv[0] must be an absolute path to the program, got {argv!r}")
    return list(argv)


def _checked_files(files: Mapping[str, str | bytes], disk_bytes: int) -> dict[str, bytes]:
    """The files as bytes, refusing any that could not be written whole: bad names,
    non-text content, more files or bytes than the working directory holds."""
    if not isinstance(files, Mapping):
        raise ValueError(f"files must map file names to contents, got {type(files).__name__}")
    if len(files) > _MAX_FILES:
        raise ValueError(f"files: at most {_MAX_FILES} files, got {len(files)}")
    checked, used = {}, 0
    for name, content in files.items():
        if (not isinstance(name, str) or not name or "/" in name or "\0" in name
                or name in (".", "..")):
            raise ValueError(f"sandbox file names must be plain names (no '/' or NUL, not '.' "
                             f"or '..'), got {name!r}")
        if len(name.encode("utf-8", "surrogateescape")) > _NAME_MAX:
            raise ValueError(f"files: the name {name[:32]!r}... is longer than {_NAME_MAX} bytes")
        if isinstance(content, str):
            content = content.encode()
        elif isinstance(content, (bytes, bytearray, memoryview)):
            content = bytes(content)
        else:
            raise ValueError(f"files[{name!r}] must be str or bytes, got {type(content).__name__}")
        used += -(-len(content) // _PAGE_BYTES) * _PAGE_BYTES
        if used > disk_bytes:
            raise ValueError(f"files[{name!r}] ({len(content)} bytes) does not fit in the working "
                             f"directory with the files before it: disk_bytes={disk_bytes}")
        checked[name] = content
    return checked


def _checked_paths(paths: Sequence[str]) -> tuple[str, ...]:
    if isinstance(paths, (str, bytes)):
        raise ValueError(f"exposed_paths must be a list of paths, got {paths!r}")
    for path in paths:
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise ValueError(f"exposed_paths must hold absolute paths without NUL bytes, got {path!r}")
    return tuple(paths)
