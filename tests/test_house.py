"""The house's rules, read from the source: which module may import which, and no edge hidden in a function.

The module map (README, "How the code is organised"): files -> frames (runformat, noise, validate, store,
load, lifecycle) -> engines that return frozen dataclasses (summary, timeprobe, reference, units, analysis,
findings, gate with gate_options and sides, watch) -> the presentation package (diffaudit.present) -> the CLI.
Arrows only point forward: an engine never imports the presentation, the presentation never imports the CLI,
and the shared vocabulary (diffaudit.words) imports nothing of its own.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import diffaudit

ROOT = Path(diffaudit.__file__).parent


def _modules():
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, ast.parse(p.read_text(encoding="utf-8"))


def _imports(tree, *, top_level_only: bool):
    """Imported module names; function bodies skipped when top_level_only (TYPE_CHECKING blocks always skipped)."""
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import) and not (top_level_only and in_function):
                out.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and not (top_level_only and in_function):
                out.append((child.module, in_function))
            visit(child, inner)

    visit(tree, False)
    return out


MODULES = dict(_modules())
ENGINES = [m for m in MODULES if not m.startswith(("diffaudit.cli", "diffaudit.present"))]

# Imports inside a function, each with its reason; every other import is at the top of its module.
DEFERRED = {
    ("diffaudit", "diffaudit.load"): "`import diffaudit` stays light; diffaudit.load_run loads polars on first use",
    ("diffaudit", "diffaudit.sweeps"): "`import diffaudit` stays light; diffaudit.sweep loads the analysis on first use",
    ("diffaudit.optimum", "torch"): "torch is optional: the GPU backend of the empirical L*",
    ("diffaudit.present.tensorboard", "tensorboard.compat.proto"): "the optional tensorboard extra",
    ("diffaudit.present.tensorboard", "tensorboard.summary.writer.event_file_writer"): "the optional tensorboard extra",
    ("diffaudit.cli", "diffaudit.sides"): "`diffaudit --help` imports no polars",
    ("diffaudit.cli.report", "diffaudit.present.html"): "matplotlib and jinja2 only when a page is asked for",
    ("diffaudit.cli.compare", "diffaudit.present.html"): "matplotlib and jinja2 only when a page is asked for",
    ("diffaudit.cli.watch", "diffaudit.present.html"): "matplotlib and jinja2 only when a page is asked for",
    ("diffaudit.cli.sweep", "diffaudit.present.html"): "matplotlib and jinja2 only when a page is asked for",
    ("diffaudit.cli.export", "diffaudit.analysis"): "export -o alone: the analysis (scipy) only for --tensorboard",
    ("diffaudit.cli.export", "diffaudit.present.markdown"): "export -o alone: only for --tensorboard",
    ("diffaudit.cli.export", "diffaudit.present.tensorboard"): "export -o alone: only for --tensorboard",
    ("diffaudit.cli.optimum", "tqdm"): "the progress bar only on a terminal",
    ("diffaudit.present.text", "diffaudit.present.cells"): "the compare table reads the gate: not summary's start-up",
    # pyarrow (~0.07 s to import) only where a file is written, a part is damaged or a run lives elsewhere:
    # reading a run its logger wrote is polars' alone
    ("diffaudit.runformat", "pyarrow"): "pyarrow schemas and writes: the logger's and the exporter's",
    ("diffaudit.runformat", "pyarrow.parquet"): "writes: the logger's and the exporter's",
    ("diffaudit.validate", "pyarrow"): "the careful reader's casts (a part with another schema than the first)",
    ("diffaudit.load", "pyarrow"): "the careful reader and exported runs",
    ("diffaudit.load", "pyarrow.parquet"): "the careful reader and exported runs",
    ("diffaudit.store", "pyarrow.fs"): "object storage only",
    ("diffaudit.store", "pyarrow.parquet"): "object storage only",
    ("diffaudit.stats", "scipy.optimize"): "24 MiB and 0.1 s of import: only where the seeds' joint test seeks a level",
}


def test_no_import_hides_inside_a_function():
    found = {(m, name) for m, tree in MODULES.items() for name, inside in _imports(tree, top_level_only=False) if inside}
    assert found == set(DEFERRED), f"new: {sorted(found - set(DEFERRED))}; gone: {sorted(set(DEFERRED) - found)}"


@pytest.mark.parametrize("module", ENGINES)
def test_engines_never_import_the_presentation_or_the_cli(module):
    names = [n for n, _ in _imports(MODULES[module], top_level_only=False)]
    bad = [n for n in names if n.startswith(("diffaudit.present", "diffaudit.cli", "click", "jinja2", "matplotlib"))]
    assert not bad, f"{module} imports {bad}: engines return data; formatting lives in diffaudit.present"


@pytest.mark.parametrize("module", ENGINES)
def test_engines_hold_no_markdown_table(module):
    rules = [n.value for n in ast.walk(MODULES[module]) if isinstance(n, ast.Constant) and isinstance(n.value, str)
             and "---|" in n.value]
    assert not rules, f"{module} builds a Markdown table: that is diffaudit.present.markdown's work"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("diffaudit.present")])
def test_the_presentation_never_imports_the_cli(module):
    names = [n for n, _ in _imports(MODULES[module], top_level_only=False)]
    assert not [n for n in names if n.startswith(("diffaudit.cli", "click"))]


def test_one_module_per_command():
    from diffaudit.cli import COMMANDS

    assert {name: module for name, (module, _) in COMMANDS.items()} == {n: f"diffaudit.cli.{n}" for n in COMMANDS}
    assert set(COMMANDS) == {m.rsplit(".", 1)[1] for m in MODULES if m.startswith("diffaudit.cli.")}
    for name, (module, _) in COMMANDS.items():  # each module registers its own command, and only that one
        tree = MODULES[module]
        registered = [d.name for d in tree.body if isinstance(d, ast.FunctionDef)
                      and any("main.command" in ast.unparse(x) for x in d.decorator_list)]
        assert registered == [name], f"{module} registers {registered}"


def test_only_the_logger_and_its_device_accumulator_import_torch_at_module_level():
    # the logger's other parts (setup, tables, writer, run directory) are torch-free, so each is tested without it
    users = sorted(m for m, tree in MODULES.items() if any(n == "torch" for n, inside in
                                                           _imports(tree, top_level_only=False) if not inside))
    assert users == ["diffaudit.accumulator", "diffaudit.logger"]


def test_the_vocabulary_imports_nothing_of_its_own():
    assert [n for n, _ in _imports(MODULES["diffaudit.words"], top_level_only=False) if n != "__future__"] == ["math"]
    assert not {"numpy", "polars"} & _loaded("import diffaudit.words")


def _loaded(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "; import sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout.split()
    return set(out)


def test_help_and_the_light_commands_load_no_heavy_module():
    help_mods = _loaded("from diffaudit.cli import main, COMMANDS")
    assert not {"polars", "numpy", "scipy", "matplotlib", "jinja2", "torch"} & help_mods
    summary = _loaded("import diffaudit.cli.summary")  # its text comes from diffaudit.present.text, which stays light
    assert "diffaudit.present.text" in summary
    assert not {"scipy", "matplotlib", "jinja2", "torch", "diffaudit.analysis", "diffaudit.present.html"} & summary
    export = _loaded("import diffaudit.cli.export")  # the analysis and the writer only for --tensorboard
    assert not {"scipy", "matplotlib", "jinja2", "torch", "diffaudit.analysis", "diffaudit.present.tensorboard"} & export
    sample = Path(__file__).resolve().parents[1] / "sample_logs" / "healthy_seed0"
    read = _loaded(f"import diffaudit; diffaudit.load_run({str(sample)!r})")  # a run its logger wrote: polars alone
    assert "polars" in read and not {"pyarrow", "pyarrow.parquet"} & read
    report = _loaded("import diffaudit.cli.report")  # a page is drawn only when asked for
    assert not {"matplotlib", "jinja2", "torch"} & report
    compare = _loaded("import diffaudit.cli.compare")  # t and normal tails come from scipy.special (fast to import)
    # scipy.optimize (24 MiB, 0.1 s) only where a root is sought: the seeds' joint test, not at import
    assert not {"scipy.stats", "scipy.optimize", "matplotlib", "jinja2", "torch"} & (report | compare)


def _all_imports(module: str) -> set[str]:
    """Every module a module names in an import, TYPE_CHECKING blocks included (a type import is still a reach)."""
    out = set()
    for node in ast.walk(MODULES[module]):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.add(node.module)
    return out


def test_findings_flow_one_way_engine_to_rules_through_the_result_types():
    # the rules read the result types and never the engine that computes them; the result types read neither
    assert "diffaudit.analysis" not in _all_imports("diffaudit.findings")
    assert "diffaudit.results" in _all_imports("diffaudit.findings")
    assert not {"diffaudit.analysis", "diffaudit.findings", "diffaudit.gate"} & _all_imports("diffaudit.results")
    assert {"diffaudit.findings", "diffaudit.results"} <= _all_imports("diffaudit.analysis")


def test_the_result_types_spike_defaults_are_the_statistics_own():
    from diffaudit import stats
    from diffaudit.results import SpikeSummary

    fields = SpikeSummary.__dataclass_fields__
    assert fields["threshold"].default == fields["single_threshold"].default == stats.SPIKE_THRESHOLD


def test_the_readme_table_of_finding_ids_is_exactly_the_registry():
    import re

    from diffaudit.findings import DETECTORS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_.]+)?)` \| (?:info|warn|fail)", readme, re.M))
    assert rows == {d.id for d in DETECTORS}
