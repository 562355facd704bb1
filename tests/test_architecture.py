"""The package's shape: no import cycles, no private name used across modules, and the model and
step code free of TensorFlow. Read from the source (ast), so it holds for imports inside
functions too."""

import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rpsflax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
  return {_module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, tree: ast.Module, known: set[str]) -> dict[str, set[str]]:
  """{imported rpsflax module: names taken from it} for every import in the module."""
  out: dict[str, set[str]] = {}
  package = name if (PACKAGE / pathlib.Path(*name.split(".")[1:]) / "__init__.py").exists() \
      else name.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name in known:
          out.setdefault(a.name, set())
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      for a in node.names:
        full = f"{base}.{a.name}"
        if full in known:             # from rpsflax import steps
          out.setdefault(full, set())
        elif base in known:           # from rpsflax.errors import DataError
          out.setdefault(base, set()).add(a.name)
  out.pop(name, None)
  return out


def _graph():
  modules = _modules()
  known = set(modules)
  return modules, {n: _imports(n, t, known) for n, t in modules.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Every strongly connected component with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  _, graph = _graph()
  # A package imports its submodules ("rpsflax.models" -> "rpsflax.models.vgg"): not a cycle.
  edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
  assert _cycles(edges) == []


def test_cycle_finder_finds_one():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_used_across_modules():
  modules, graph = _graph()
  offenders = []
  for name, tree in modules.items():
    for dep, names in graph[name].items():
      offenders += [f"{name}: from {dep} import {n}" for n in names if n.startswith("_")]
    aliases = {}
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == "rpsflax":
        aliases.update({a.asname or a.name: f"rpsflax.{a.name}" for a in node.names})
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        offenders.append(f"{name}: {node.value.id}.{node.attr}")
  assert offenders == []


def test_model_and_step_code_never_import_tensorflow():
  code = ("import sys\n"
          "import rpsflax.steps, rpsflax.models, rpsflax.features, rpsflax.restore, "
          "rpsflax.optim, rpsflax.augment, rpsflax.preprocess, rpsflax.config_check\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'keras', 'tensorflow_datasets')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == "[]"


# Where a backbone's name may be written: its registry entry (rpsflax/models/) and preprocess.py,
# whose config.preprocess names are the backbones'. config_base.py holds the defaults (which
# backbone a run uses when the recipe does not say); every other module asks the registry.
NAMES_ALLOWED_IN = ("rpsflax/models/", "rpsflax/preprocess.py", "rpsflax/config_base.py")


def _backbone_name_literals(names) -> list[str]:
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(REPO).as_posix()
    if rel.startswith(NAMES_ALLOWED_IN):
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Constant) and node.value in names:
        found.append(f"{rel}:{node.lineno}: {node.value!r}")
  return found


def test_backbone_names_live_in_the_registry():
  """Adding a backbone is its model file plus one registry line: no other module tests a
  backbone's name (it reads `models.get_spec(name)` instead)."""
  from rpsflax import models

  assert "vgg16" in models.BACKBONES  # the names searched for are the registry's
  assert _backbone_name_literals(set(models.BACKBONES)) == []


# docs/architecture.md names modules, functions, classes and config keys in `backticks`: each
# must still exist under that name, so a rename fails here until the page follows.
ARCHITECTURE_DOC = REPO / "docs" / "architecture.md"


def _defined_names(body) -> set[str]:
  names = set()
  for node in body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      names.add(node.target.id)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split(".")[0] for a in node.names)
  return names


def _module_path(dotted: str):
  base = PACKAGE.joinpath(*dotted.split("."))
  for path in (base.with_suffix(".py"), base / "__init__.py"):
    if path.is_file():
      return path
  return None


def _resolves(name: str) -> bool:
  """`steps.make_train_step`, `checkpoint.Checkpoints.restore`, `weights.check_spec`: the
  longest prefix that is an rpsflax module, then a top-level name, then a class member."""
  parts = name.split(".")
  for cut in range(len(parts), 0, -1):
    path = _module_path(".".join(parts[:cut]))
    if path is None:
      continue
    rest, body = parts[cut:], ast.parse(path.read_text()).body
    for i, part in enumerate(rest):
      if part not in _defined_names(body):
        return False
      if i + 1 < len(rest):
        body = next((n.body for n in body if isinstance(n, ast.ClassDef) and n.name == part), [])
    return True
  return False


def _cited_names(text: str) -> tuple[list[str], list[str], list[str]]:
  """(rpsflax names, config keys, source files) cited in backticks; commands, run outputs and
  JAX's names are not checked."""
  import re  # noqa: PLC0415

  ours, keys, files = [], [], []
  text = re.sub(r"```.*?```", "", text, flags=re.S)  # the module map's code block
  for token in re.findall(r"`([^`]+)`", text):
    token = token.split("(")[0]
    if re.fullmatch(r"[\w/]+\.py", token):
      files.append(token)
    elif re.fullmatch(r"[\w/]+\.(json|png|md)", token):  # what a run writes, other pages
      continue
    elif not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", token):
      continue
    elif token.startswith("config."):
      keys.append(token)
    elif _module_path(token.split(".")[0]) is not None:
      ours.append(token)
  return ours, keys, files


def test_architecture_doc_names_what_the_code_has():
  from rpsflax import config_base  # noqa: PLC0415

  ours, keys, files = _cited_names(ARCHITECTURE_DOC.read_text())
  assert len(ours) > 40 and "steps.make_train_step" in ours  # the page is read as meant
  assert [n for n in ours if not _resolves(n)] == []
  assert [f for f in files if not ((REPO / f).is_file() or (PACKAGE / f).is_file())] == []
  base = config_base.get_config()
  missing = []
  for key in keys:
    node = base
    for part in key.split(".")[1:]:
      if part not in node:
        missing.append(key)
        break
      node = node[part]
  assert missing == []
