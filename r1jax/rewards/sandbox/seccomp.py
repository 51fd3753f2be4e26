"""The seccomp filter: the system calls a sandboxed program may not make, and why."""
from __future__ import annotations

import ctypes
import functools
import os
import struct
from typing import Optional

from r1jax.rewards.sandbox.kernel import _libc

_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2

# The seccomp filter's view of each architecture: its audit id and the numbers of
# the calls it looks at (the errno a refused call returns is in _syscall_filter).
_EPERM, _ENOSYS, _ESOCKTNOSUPPORT, _EAFNOSUPPORT = 1, 38, 94, 97
_AF_UNIX, _SOCK_STREAM, _SOCK_SEQPACKET, _SOCK_TYPE_MASK = 1, 1, 5, 0xF
_SOL_SOCKET, _SOCKET_BUFFER_OPTIONS = 1, (7, 8, 32, 33)  # SO_SNDBUF, SO_RCVBUF, SO_*BUFFORCE
_CLONE_NEWUSER = 0x10000000
_SECCOMP_ARCH = {
    "x86_64": (0xC000003E, dict(
        socket=41, socketpair=53, setsockopt=54, clone=56, unshare=272, add_key=248, request_key=249,
        keyctl=250, memfd_create=319, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        clone3=435, memfd_secret=447)),
    "aarch64": (0xC00000B7, dict(
        socket=198, socketpair=199, setsockopt=208, clone=220, unshare=97, add_key=217, request_key=218,
        keyctl=219, memfd_create=279, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        clone3=435, memfd_secret=447)),
}
# Calls that do not exist in the sandbox (ENOSYS: libraries fall back, as glibc does
# from clone3 to clone): memory in no one's limit (memfds), operations out of the
# filter's sight (io_uring; clone3's flags are behind a pointer), kernel keyrings
# (a key outlives its run and is readable by the next run with the same uid).
_ABSENT_CALLS = ("memfd_create", "memfd_secret", "io_uring_setup", "io_uring_enter",
                 "io_uring_register", "clone3", "add_key", "request_key", "keyctl")
_X32_SYSCALL_BIT = 0x40000000  # x86_64's second syscall table (the x32 ABI)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def _install_syscall_filter() -> int:
    """Install the seccomp filter on this thread and its future children (it
    needs PR_SET_NO_NEW_PRIVS or root). Returns 0 or -1, as prctl does."""
    fprog = _syscall_filter()
    if fprog is None:
        return -1
    return _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)


@functools.lru_cache(maxsize=None)
def _syscall_filter() -> Optional[_SockFprog]:
    """The filter, in classic BPF over `struct seccomp_data` (nr at offset 0, arch
    at 4, argument i's low word at 16 + 8 i on these little-endian machines), as
    prctl takes it; None on an architecture it does not know. It refuses:

      * the _ABSENT_CALLS (ENOSYS), and any call of another architecture's table;
      * clone and unshare with CLONE_NEWUSER (EPERM): a user namespace would give
        the program namespaces of its own, e.g. an IPC namespace without our limits;
      * socket(AF_UNIX) (EAFNOSUPPORT): a host service's socket file is reachable
        from any mount namespace;
      * socketpair() of any type but SOCK_STREAM and SOCK_SEQPACKET
        (ESOCKTNOSUPPORT): a datagram socket, even one of a pair, can sendto() any
        socket file it can name; a connected stream cannot be re-addressed;
      * setsockopt(SOL_SOCKET, SO_SNDBUF / SO_RCVBUF and their FORCE forms) (EPERM):
        socket buffers are kernel memory, so each keeps the kernel's default size
        (what bounds them where no memory cgroup counts them).
    """
    machine = os.uname().machine
    if machine not in _SECCOMP_ARCH:
        return None
    arch, numbers = _SECCOMP_ARCH[machine]
    load, jeq, jge, jset, and_, ret = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
    allow, errno = 0x7FFF0000, 0x00050000

    def argument(index):
        return 16 + 8 * index

    # (code, k, label if true, label if false) with None = the next instruction, or a label.
    program = [(load, 4), (jeq, arch, None, "enosys"), (load, 0)]
    if machine == "x86_64":
        program += [(jge, _X32_SYSCALL_BIT, "enosys", None)]
    program += [(jeq, numbers[name], "enosys", None) for name in _ABSENT_CALLS]
    program += [(jeq, numbers["clone"], "clone", None), (jeq, numbers["unshare"], "clone", None),
                (jeq, numbers["socket"], "socket", None), (jeq, numbers["socketpair"], "socketpair", None),
                (jeq, numbers["setsockopt"], "setsockopt", None), (ret, allow),
                "clone", (load, argument(0)), (jset, _CLONE_NEWUSER, "eperm", None), (ret, allow),
                "socket", (load, argument(0)), (jeq, _AF_UNIX, "eafnosupport", None), (ret, allow),
                "socketpair", (load, argument(1)), (and_, _SOCK_TYPE_MASK),
                (jeq, _SOCK_STREAM, "allow", None), (jeq, _SOCK_SEQPACKET, "allow", None),
                (ret, errno | _ESOCKTNOSUPPORT),
                "setsockopt", (load, argument(1)), (jeq, _SOL_SOCKET, None, "allow"), (load, argument(2))]
    program += [(jeq, option, "eperm", None) for option in _SOCKET_BUFFER_OPTIONS]
    program += ["allow", (ret, allow), "eperm", (ret, errno | _EPERM),
                "enosys", (ret, errno | _ENOSYS), "eafnosupport", (ret, errno | _EAFNOSUPPORT)]
    return _assemble(program)


def _assemble(program: list) -> _SockFprog:
    """BPF bytes from (code, k, [jump if true, jump if false]) tuples and label strings;
    a jump names a later label, or None for the next instruction."""
    labels, index = {}, 0
    for item in program:
        if isinstance(item, str):
            labels[item] = index
        else:
            index += 1
    instructions = [item for item in program if not isinstance(item, str)]
    code = b""
    for index, (op, k, *jumps) in enumerate(instructions):
        targets = (jumps + [None, None])[:2]
        offsets = [0 if target is None else labels[target] - index - 1 for target in targets]
        assert all(0 <= offset < 256 for offset in offsets), (op, k, jumps)
        code += struct.pack("<HBBI", op, offsets[0], offsets[1], k)
    return _SockFprog(len(instructions), code)  # the bytes live as long as the cached struct
