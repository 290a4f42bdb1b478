"""The scorer registry: each scorer is declared once, by its class, and the config's choices and help, the trainer's
checks, the docs' table and the package's one attention implementation follow from it."""

import dataclasses
import re
from pathlib import Path

import pytest
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

import hf_flowcredit.intervention  # noqa: F401 - imported for its registrations, if any
from hf_flowcredit import FlowGRPOConfig
from hf_flowcredit.config import TOKEN_SCORERS
from hf_flowcredit.scoring import SCORERS, config_options, count_forwards, get_scorer, register_scorer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hf_flowcredit.md"
SETTINGS = dict(output_dir="unused", report_to="none", use_cpu=True)


def documented_scorers() -> dict[str, tuple[str, str, str, str]]:
    """`{name: (runs the model, reads attention, set by, summary)}` from the table under "## Token scorers"."""
    section = DOCS.read_text().split("## Token scorers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (yes|no) \| (yes|no) \|([^|]*)\|([^|]*)\|$", section, re.M)
    return {name: (runs, reads, set_by.strip(), summary.strip()) for name, runs, reads, set_by, summary in rows}


def test_docs_table_matches_the_registry():
    expected = {
        name: (
            "yes" if scorer.runs_model else "no",
            "yes" if scorer.reads_attention else "no",
            ", ".join(f"`{field}`" for field in config_options(scorer).values()),
            scorer.summary,
        )
        for name, scorer in SCORERS.items()
    }
    assert documented_scorers() == expected


def test_config_choices_help_and_docstring_come_from_the_registry():
    assert TOKEN_SCORERS == (*SCORERS, "none")
    field = next(f for f in dataclasses.fields(FlowGRPOConfig) if f.name == "token_scorer")
    assert field.metadata["choices"] == list(TOKEN_SCORERS)
    for name, scorer in SCORERS.items():
        assert f"'{name}': {scorer.summary}" in field.metadata["help"]
        assert f'`"{name}"`: {scorer.summary}.' in FlowGRPOConfig.__doc__
    assert "{token_scorers}" not in FlowGRPOConfig.__doc__


def test_config_sets_the_options_the_scorer_declares():
    args = FlowGRPOConfig(**SETTINGS, bf16=False, flow_layers="0,2", flow_recompute_min_length=None)
    assert args.scorer_options() == {"layers": [0, 2], "recompute_min_length": None}
    assert FlowGRPOConfig(**SETTINGS, bf16=False, token_scorer="attention").scorer_options() == {"layers": "middle"}
    assert FlowGRPOConfig(**SETTINGS, bf16=False, token_scorer="entropy").scorer_options() == {}
    assert FlowGRPOConfig(**SETTINGS, bf16=False, token_scorer="none").scorer_options() == {}


@pytest.fixture
def docs_example_scorer():
    """The scorer the docs' example registers, executed from the docs' code block; unregistered afterwards."""
    section = DOCS.read_text().split("## Token scorers", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    yield namespace["PositionScorer"]
    SCORERS.pop("position")


def test_a_scorer_registered_outside_the_package_is_usable(docs_example_scorer):
    assert SCORERS["position"] is docs_example_scorer
    args = FlowGRPOConfig(**SETTINGS, bf16=False, token_scorer="position")
    assert args.scorer_options() == {}
    assert isinstance(get_scorer("position"), docs_example_scorer)


def test_register_scorer_refuses_duplicates_and_undeclared_classes():
    with pytest.raises(ValueError, match="'flow' exists already"):
        register_scorer(SCORERS["flow"])

    @dataclasses.dataclass
    class Undeclared:
        name = "undeclared"

    with pytest.raises(TypeError, match="runs_model.*reads_attention"):
        register_scorer(Undeclared)
    assert "undeclared" not in SCORERS


def _declared(runs_model, reads_attention, with_forward_groups):
    namespace = dict(name="declared", runs_model=runs_model, reads_attention=reads_attention, summary="s")
    namespace["__call__"] = lambda self, model, batch: batch.completion_mask.float()
    if with_forward_groups:
        namespace["forward_groups"] = lambda self, model, batch: [None]
    return dataclasses.dataclass(type("Declared", (), namespace))


@pytest.mark.parametrize(
    "runs_model, reads_attention, match",
    [(True, False, "runs_model=True but has no `forward_groups"), (False, True, "needs runs_model=True")],
)
def test_a_scorer_that_runs_the_model_must_say_how_many_forwards_it_runs(runs_model, reads_attention, match):
    with pytest.raises(TypeError, match=match):
        register_scorer(_declared(runs_model, reads_attention, with_forward_groups=False))
    assert "declared" not in SCORERS


def test_count_forwards_follows_the_declaration_and_refuses_an_undeclared_scorer():
    scorer_class = register_scorer(_declared(True, False, with_forward_groups=True))
    try:
        assert count_forwards(scorer_class(), model=None, batch=None) == 1
    finally:
        SCORERS.pop("declared")
    assert count_forwards(get_scorer("random"), model=None, batch=None) == 0

    class Unregistered:  # a bare callable: no declaration, so its forward count is unknown rather than 0
        name = "unregistered"

        def __call__(self, model, batch):
            return batch.completion_mask.float()

    with pytest.raises(TypeError, match="does not declare `runs_model`"):
        count_forwards(Unregistered(), model=None, batch=None)


def test_the_package_registers_one_attention_implementation():
    ours = [name for name in AttentionInterface._global_mapping if name.startswith("flowcredit")]
    masks = [name for name in AttentionMaskInterface._global_mapping if name.startswith("flowcredit")]
    assert ours == masks == ["flowcredit"]


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: 5-15 s on the loaded 2-core CPU
def test_package_imports_are_lazy_and_the_core_needs_no_trl():
    import subprocess
    import sys

    code = (
        "import sys, hf_flowcredit\n"
        "assert 'torch' not in sys.modules, 'import hf_flowcredit loaded torch'\n"
        "hf_flowcredit.get_scorer('flow'), hf_flowcredit.capture_attention, hf_flowcredit.render_html\n"
        "assert 'trl' not in sys.modules, 'the core library loaded trl'\n"
        "hf_flowcredit.FlowGRPOConfig\n"
        "assert 'trl' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
