"""Notice when Triton compiles a kernel variant: after start-up that is a stall of about a second
for every request in the step, so the worker counts and logs it."""
from __future__ import annotations

from collections.abc import Callable


def on_compile(callback: Callable[[str], None]) -> bool:
    """From now on, call `callback(description)` before Triton compiles a kernel variant it has not
    compiled in this process. False (nothing installed) where this Triton has no such hook."""
    try:
        import triton
        runtime = triton.knobs.runtime
    except (ImportError, AttributeError):
        return False

    def hook(*args, **kwargs):
        details = {k: v for k, v in kwargs.items() if k not in ("fn", "repr")}
        callback(f"{kwargs.get('repr', 'a Triton kernel')} {details}")
        return None  # compile it as usual

    runtime.jit_cache_hook = hook
    return True
