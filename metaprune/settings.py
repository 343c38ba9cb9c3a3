"""How a setting relates to the artifacts of a run, declared once, on the setting's own field.

Every setting is part of the identity of what its section makes (`metaprune.identity`), unless its
field says otherwise:

    runtime   how or where work runs, never its result (checkpoint intervals, evaluation batch
              sizes, the executor, the Ray address, the study storage URL)
    choice    which candidates are trained, not how any one is trained (finetune.top_k and ASHA's
              settings): part of the top-k experiment's identity, not of a fine-tune's weights
    file      a path whose content, not its name, is the identity (base.weights: its digest)
"""

from __future__ import annotations

import dataclasses
from typing import Any

ROLE = "identity"
RUNTIME, CHOICE, FILE = "runtime", "choice", "file"


def runtime(default: Any) -> Any:
    return dataclasses.field(default=default, metadata={ROLE: RUNTIME})


def choice(default: Any) -> Any:
    return dataclasses.field(default=default, metadata={ROLE: CHOICE})


def file(default: Any) -> Any:
    return dataclasses.field(default=default, metadata={ROLE: FILE})


def fields_with_role(section: Any, *roles: str) -> list[str]:
    """The names of a config section's fields (a dataclass instance or class) whose role is one of `roles`."""
    return [f.name for f in dataclasses.fields(section) if f.metadata.get(ROLE) in roles]


def without(section: Any, values: dict[str, Any], *roles: str) -> dict[str, Any]:
    """`values` (the section as a dict) without the fields of those roles."""
    dropped = set(fields_with_role(section, *roles))
    return {key: value for key, value in values.items() if key not in dropped}
