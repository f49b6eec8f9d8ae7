"""The few CUDA driver calls the CUDA IPC transfer engine needs, through ctypes.

``libcuda.so.1`` comes with the NVIDIA driver, so no extra package is needed.
torch exposes IPC only for whole tensors; KV pools hand the transfer seam raw
addresses, so the engine asks the driver for the allocation behind an address
(``cuMemGetAddressRange``), exports its IPC handle, and on the other side maps
that handle and copies with ``cuMemcpyDtoDAsync`` on torch streams.

Every call needs a current context: callers run ``torch.cuda.set_device`` in the
calling thread first (torch then makes the device's primary context current).
"""

from __future__ import annotations

import ctypes
import functools

CU_IPC_HANDLE_SIZE = 64
CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 0x1


class CUipcMemHandle(ctypes.Structure):
    # c_ubyte, not c_char: a c_char array converts to bytes only up to its first NUL.
    _fields_ = [("reserved", ctypes.c_ubyte * CU_IPC_HANDLE_SIZE)]


class CudaDriverError(RuntimeError):
    """A CUDA driver call returned an error code; the message names call and code."""


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libcuda.so.1")
    u64, p = ctypes.c_uint64, ctypes.POINTER
    lib.cuMemGetAddressRange_v2.argtypes = [p(u64), p(ctypes.c_size_t), u64]
    lib.cuIpcGetMemHandle.argtypes = [p(CUipcMemHandle), u64]
    lib.cuIpcOpenMemHandle_v2.argtypes = [p(u64), CUipcMemHandle, ctypes.c_uint]
    lib.cuIpcCloseMemHandle.argtypes = [u64]
    lib.cuMemcpyDtoDAsync_v2.argtypes = [u64, u64, ctypes.c_size_t, ctypes.c_void_p]
    lib.cuMemcpyAsync.argtypes = [u64, u64, ctypes.c_size_t, ctypes.c_void_p]
    lib.cuGetErrorName.argtypes = [ctypes.c_int, p(ctypes.c_char_p)]
    return lib


def _check(code: int, call: str) -> None:
    if code == 0:
        return
    name = ctypes.c_char_p()
    _lib().cuGetErrorName(code, ctypes.byref(name))
    label = name.value.decode() if name.value else f"error {code}"
    raise CudaDriverError(f"{call} failed: {label}")


def allocation_of(addr: int) -> tuple[int, int]:
    """``(base, size)`` of the device allocation that contains ``addr``."""
    base, size = ctypes.c_uint64(), ctypes.c_size_t()
    _check(
        _lib().cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), addr),
        "cuMemGetAddressRange",
    )
    return base.value, size.value


def ipc_handle(base: int) -> bytes:
    """The IPC handle of the allocation starting at ``base`` (64 opaque bytes)."""
    handle = CUipcMemHandle()
    _check(_lib().cuIpcGetMemHandle(ctypes.byref(handle), base), "cuIpcGetMemHandle")
    return bytes(handle.reserved)


def open_ipc_handle(handle: bytes) -> int:
    """Map another process's allocation here; returns its base address in this process."""
    if len(handle) != CU_IPC_HANDLE_SIZE:
        raise CudaDriverError(f"an IPC handle has {CU_IPC_HANDLE_SIZE} bytes, got {len(handle)}")
    h = CUipcMemHandle()
    ctypes.memmove(h.reserved, handle, CU_IPC_HANDLE_SIZE)
    ptr = ctypes.c_uint64()
    _check(
        _lib().cuIpcOpenMemHandle_v2(ctypes.byref(ptr), h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS),
        "cuIpcOpenMemHandle",
    )
    return ptr.value


def close_ipc_handle(mapped_base: int) -> None:
    _check(_lib().cuIpcCloseMemHandle(mapped_base), "cuIpcCloseMemHandle")


def copy_async(dst: int, src: int, nbytes: int, stream: int) -> None:
    """Device-to-device copy on ``stream`` (a ``torch.cuda.Stream.cuda_stream``).

    ``cuMemcpyAsync`` (unified addressing, the call behind cudaMemcpyAsync) rather
    than ``cuMemcpyDtoDAsync``: the driver picks the peer path from the pointers.
    """
    _check(_lib().cuMemcpyAsync(dst, src, nbytes, ctypes.c_void_p(stream)), "cuMemcpyAsync")
