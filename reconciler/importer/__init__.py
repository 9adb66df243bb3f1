"""`reconciler import-compose`: translate docker compose files into a spec directory.

An offline tool, never on the reconcile path. Module map:
- `model`: value types (remarks, sources, results) and `parse` (the shared capped YAML reader,
  `reconciler.yamlread`, the same one the spec loader uses);
- `interpolate`: `${VAR}` interpolation and which interpolated values are secrets;
- `merge`: `-f a -f b` merging, list forms, same-file `extends`;
- `service` + `keys`, `mounts`, `deploy`: one service, through an explicit table from compose
  key to handler;
- `graph`: tiers, dependency cycles and the edges proposed to break them;
- `translate`: `import_compose`, the whole translation (pure);
- `render`: the spec files;
- `cli`: the shell (reads the files, writes the spec and the secrets env files).
"""

from __future__ import annotations

from reconciler.importer.graph import Placement, break_cycles, place
from reconciler.importer.model import CycleReport, ImportResult, Kind, Remark, Source
from reconciler.importer.naming import image_role, rebase, sanitise_project
from reconciler.importer.render import render_files
from reconciler.importer.translate import import_compose

__all__ = ["CycleReport", "ImportResult", "Kind", "Placement", "Remark", "Source",
           "break_cycles", "image_role", "import_compose", "place", "rebase", "render_files",
           "sanitise_project"]
