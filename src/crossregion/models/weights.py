"""Reading weight files and comparing state dicts, shared by ImageNet and checkpoint loading."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Added to every key by DistributedDataParallel and torch.compile respectively.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def _numpy_data_globals() -> list[Any]:
    """The constructors numpy pickles arrays, scalars and dtypes with.

    Training checkpoints hold numpy's RNG state (an array). These globals only rebuild data, so
    allowing them keeps ``weights_only`` loading safe.
    """
    dtypes = [np.dtype(name) for name in ("bool", "int32", "int64", "uint8", "uint32", "float32", "float64")]
    array_reconstruct = np.empty(0).__reduce__()[0]
    scalar_reconstruct = np.float64(0).__reduce__()[0]
    return [
        np.ndarray,
        np.dtype,
        array_reconstruct,
        scalar_reconstruct,
        *(type(dtype) for dtype in dtypes),
    ]


def read_torch_file(path: str | Path, *, what: str) -> Any:
    """``torch.load`` of a local file on CPU, with errors that name the file.

    Only tensors, plain Python containers and numpy data are unpickled (``weights_only=True``),
    so a file from someone else cannot run code.

    Args:
        path: the file.
        what: what the file should be, for the messages ("checkpoint", "ImageNet weights").

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is truncated, not a PyTorch file, or holds arbitrary Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the GLOBAL a pickle would call (os.system, say); anything else it reports
        # here is a file that is not a pickle of tensors at all.
        if "GLOBAL" not in str(error):
            raise _unreadable(path, what, error) from error
        raise ValueError(
            f"refusing to load {what} {path}: it holds Python objects other than tensors and plain data, "
            "and unpickling them could run code (a file from an untrusted source?)"
        ) from error
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        raise _unreadable(path, what, error) from error


def _unreadable(path: Path, what: str, error: Exception) -> ValueError:
    message = str(error).strip() or "no message"
    first_sentence = message.splitlines()[0].split(". ")[0][:200]  # torch's are paragraphs
    return ValueError(
        f"cannot read {what} {path}: the file is truncated or not a PyTorch file "
        f"({type(error).__name__}: {first_sentence})"
    )


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removes leading ``module.`` / ``_orig_mod.`` (in any order and number) from every key."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def is_state_dict(candidate: Any) -> bool:
    """True for a mapping of string keys to tensors."""
    return isinstance(candidate, dict) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in candidate.items()
    )


def describe_state_dict_mismatch(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], *, limit: int = 6
) -> str:
    """One readable sentence listing missing keys, unexpected keys and shape mismatches.

    Returns an empty string when keys and shapes agree; at most ``limit`` keys are shown per kind.
    """

    def listing(items: list[str]) -> str:
        shown = ", ".join(items[:limit])
        return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    mismatched = [
        f"{key} expected {tuple(expected[key].shape)} found {tuple(found[key].shape)}"
        for key in expected
        if key in found and expected[key].shape != found[key].shape
    ]
    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches ({listing(mismatched)})")
    if missing:
        parts.append(f"{len(missing)} missing keys ({listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({listing(unexpected)})")
    return "; ".join(parts)
