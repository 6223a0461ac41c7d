"""How a failed request shows: the library's own errors as their message, anything else as this request's."""

from __future__ import annotations

from contextlib import contextmanager

import gradio as gr

from ..models import ModelLoadError
from ..precomputed import PrecomputedError


@contextmanager
def shown_to_user():
    """Turn the library's own errors into a Gradio error box with its message, instead of a crash.

    Anything else (a fault inside the model, out of memory) is reported as this request's failure, with the
    traceback in the server log; the ablation context has already removed its hooks and released the lock.
    """
    try:
        yield
    except gr.Error:
        raise
    except (ValueError, FileNotFoundError, ModelLoadError, PrecomputedError) as err:
        raise gr.Error(str(err), print_exception=False) from err
    except Exception as err:
        what = f"{type(err).__name__}: {err}"[:300]
        raise gr.Error(f"This request failed ({what}); other requests are not affected, try again.") from err
