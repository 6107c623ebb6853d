"""The fine-tuning tasks, by name: SQuAD v1.1/v2.0, the GLUE tasks, CoNLL-2003 and SWAG.

`get_task("glue/SST-2")` returns the `Task` (see `tasks.base`) the trainer runs. Canonical names
are `squad`, `squad_v2`, `glue/<cola|sst2|mrpc|qqp|stsb|mnli|qnli|rte|wnli>`, `conll2003` and
`swag`; the usual spellings are accepted too (`squad1.1`, `squad/v2.0`, `SST-2`, `glue_sts-b`,
`mnli`, `conll`, ...).
"""

from __future__ import annotations

import re

from mobilebert_jax.tasks import conll, glue, squad, swag
from mobilebert_jax.tasks.base import EvalSet, Task

__all__ = ["TASKS", "EvalSet", "Task", "canonical_task_name", "get_task"]

TASKS: dict[str, Task] = {**squad.TASKS, **glue.TASKS, **conll.TASKS, **swag.TASKS}

_ALIASES = {
  "squad1": "squad",
  "squad11": "squad",
  "squadv1": "squad",
  "squadv11": "squad",
  "squad2": "squad_v2",
  "squad20": "squad_v2",
  "squadv2": "squad_v2",
  "squadv20": "squad_v2",
  "conll": "conll2003",
  "conll03": "conll2003",
  "conll2003ner": "conll2003",
  "ner": "conll2003",
}


def _squash(name: str) -> str:
  return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_task_name(name: str) -> str:
  """The canonical name of a task spelled in any usual way.

  Raises:
    ValueError: an unknown task, listing the known ones.
  """
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"no task given; known tasks: {sorted(TASKS)}")
  key = _squash(name)
  if key in {_squash(t): t for t in TASKS}:
    return {_squash(t): t for t in TASKS}[key]
  if key in _ALIASES:
    return _ALIASES[key]
  glue_key = key.removeprefix("glue")
  if glue_key in glue.TRAINABLE:
    return f"glue/{glue_key}"
  if glue_key in ("ax", "diagnostic"):
    raise ValueError(
      "GLUE's diagnostic set (AX) is not trained on: it is predicted with an MNLI model "
      "(--task=glue/mnli)"
    )
  raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")


def get_task(name: str) -> Task:
  """The `Task` called `name` (any spelling `canonical_task_name` accepts)."""
  return TASKS[canonical_task_name(name)]
