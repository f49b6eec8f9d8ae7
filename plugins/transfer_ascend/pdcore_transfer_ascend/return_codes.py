"""What memfabric's return codes mean, so a failed call says more than a number.

Taken from the headers shipped in memfabric-hybrid 1.3.0 (``include/smem/host/smem.h``,
``smem_def.h`` and ``include/hybm/hybm_def.h``); mf_adapter 1.0.0 wraps the same
library. -1 is the generic failure of both layers: memfabric's log says which.
"""

from __future__ import annotations

CODES = {
    -1: "generic failure (SMEM_ERROR / BM_ERROR); memfabric's log has the cause",
    -2: "invalid parameter (BM_INVALID_PARAM)",
    -3: "memory allocation failed (BM_MALLOC_FAILED)",
    -4: "object creation failed (BM_NEW_OBJECT_FAILED)",
    -5: "file not accessible (BM_FILE_NOT_ACCESS)",
    -6: "a driver/CANN function could not be loaded (BM_DL_FUNCTION_FAILED)",
    -7: "timed out (BM_TIMEOUT)",
    -8: "the underlying API is unloaded (BM_UNDER_API_UNLOAD)",
    -9: "not initialized (BM_NOT_INITIALIZED)",
    -10: "function not supported (BM_NOT_SUPPORT_FUNC)",
    -11: "peer-to-peer path not ready (BM_P2P_NOT_READY)",
    -100: "not supported (BM_NOT_SUPPORTED)",
    -101: "not connected (BM_NOT_CONNECTED)",
    -2000: "invalid parameter (SMEM_INVALID_PARAM)",
    -2001: "memory allocation failed (SMEM_MALLOC_FAILED)",
    -2002: "no resources left (SMEM_NO_RESOURCES)",
    -2003: "not started (SMEM_NOT_STARTED)",
    -2004: "timed out (SMEM_TIMEOUT)",
    -2005: "called twice (SMEM_REPEAT_INVOKE)",
    -2006: "duplicated (SMEM_DUPLICATED)",
    -2007: "does not exist (SMEM_NOT_EXIST)",
    -2008: "not initialized (SMEM_NOT_INIT)",
    -2009: "resource in use (SMEM_RES_IN_USE)",
    -2012: "partially failed (SMEM_PARTIAL_FAILED)",
    -2014: "not connected (SMEM_NOT_CONNECTED)",
    -2015: "buffer too small (SMEM_BUFFER_TOO_SMALL)",
    -3000: "config store internal error (SMEM_STORE_BACKEND_CODE_INTERNAL)",
    -3001: "config store: invalid argument (SMEM_STORE_BACKEND_CODE_INVAL)",
    -3002: "config store: buffer exceeded (SMEM_STORE_BACKEND_CODE_BUFEX)",
    -3003: "config store: permission denied (SMEM_STORE_BACKEND_CODE_PERM)",
    -3004: "config store: no resources (SMEM_STORE_BACKEND_CODE_NORES)",
    -3005: "config store: no such entry (SMEM_STORE_BACKEND_CODE_NOENT)",
    -3006: "config store: locked (SMEM_STORE_BACKEND_CODE_LOCKED)",
    -3007: "config store: unlocked (SMEM_STORE_BACKEND_CODE_UNLOCKED)",
}


def describe(code: int) -> str:
    """``return code N (meaning)``; an unknown code says where to look."""
    meaning = CODES.get(code, "unknown to pdcore; see memfabric's log (ASCEND_MF_LOG_LEVEL=0)")
    return f"return code {code} ({meaning})"
