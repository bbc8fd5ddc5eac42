"""svs.options: one options object, its defaults in one place (the operator's from its schema)."""
import dataclasses
import inspect

import pytest

import svs
from svs.cli import build_parser
from svs.cli_common import refine_options
from svs.options import DEFAULTS, RefineOptions


def test_defaults_are_the_documented_ones():
    assert DEFAULTS == RefineOptions(preset="generic", include=None, exclude=None, map="sqrt", method="auto", eps=1e-8,
                                     certify=True, dry_run=False, stats=True, progress=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.map = "log1p"


@pytest.mark.parametrize("fn", [svs.refine_model, svs.refine, svs.refine_, svs.refine_with_spectra, svs.select])
def test_every_signature_takes_its_defaults_from_the_options(fn):
    params = inspect.signature(fn).parameters
    for field in dataclasses.fields(RefineOptions):
        if field.name in params:
            assert params[field.name].default == getattr(DEFAULTS, field.name), field.name
    assert inspect.signature(svs.map_spectrum).parameters["map"].default == DEFAULTS.map


def test_the_cli_builds_the_same_options(tmp_path):
    args = build_parser().parse_args(["refine", str(tmp_path / "m.pt"), "-o", str(tmp_path / "o.pt")])
    assert refine_options(args) == DEFAULTS  # progress: only on a terminal, and pytest's stderr is not one
    args = build_parser().parse_args(["refine", "m", "--preset", "ddpm", "--map", "log1p", "--exclude", "x",
                                      "--no-certify", "--dry-run", "--method", "aten"])
    assert refine_options(args) == RefineOptions(preset="ddpm", map="log1p", exclude="x", certify=False, dry_run=True,
                                                 method="aten")


def test_the_record_keeps_what_was_done():
    assert DEFAULTS.recorded() == {"preset": "generic", "include": None, "exclude": None, "map": "sqrt", "eps": 1e-8,
                                   "method": "auto", "certify": True}
