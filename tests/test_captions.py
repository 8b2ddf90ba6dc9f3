"""Report captions state the values the run used, rendered from the config as Snakemake does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from docutils.core import publish_parts
from jinja2 import Environment

from hessvalley.config import validate_config

from .conftest import REPO

CAPTIONS = (
    "wei2020_fig1",
    "wei2020_fig2a",
    "wei2020_fig3",
    "wei2020_fig4",
    "wei2020_fig5",
    "wei2020_fig6",
    "sagun2017_outliers",
    "sagun2017_table1",
    "sagun2017_width",
    "sagun2017_batch",
    "xing2018_fig5",  # Xing et al. 2018 Figs 5-7
    "xing2018_fig7",
    "curvature",
    "training",
    # Xing et al. 2018 §3 (Figs 1-4, Table 1)
    "xing2018_fig1",
    "xing2018_table1",
)


def render(caption: str, config: dict, **wildcards) -> str:
    """The caption as ``snakemake --report`` renders it (same Jinja options), checked to be
    valid reStructuredText."""
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string((REPO / "workflow" / "report" / f"{caption}.rst").read_text())
    snakemake = SimpleNamespace(config=config, params={}, wildcards=SimpleNamespace(**wildcards))
    text = template.render(snakemake=snakemake)
    publish_parts(text, writer="html", settings_overrides={"halt_level": 2})
    return " ".join(text.split())


@pytest.fixture(scope="module", params=["config.yaml", "paper.yaml"])
def config(request) -> dict:
    return validate_config(yaml.safe_load((REPO / "config" / request.param).read_text()))


@pytest.mark.parametrize("caption", CAPTIONS)
def test_captions_render_for_every_setting(caption, config):
    for setting in config["runs"]:
        text = render(caption, config, setting=setting)
        assert "{{" not in text and "{%" not in text


def test_captions_state_the_run_values_not_the_papers(config):
    projection, curvature = config["projection"], config["curvature"]
    config = {**config, "projection": {**projection, "loss_threshold": 0.0123}}
    for setting in config["projection"]["figures"]["fig1"]:
        override = (projection["runs"][setting] or {}).get("loss_threshold", 0.0123)
        assert f"``{setting}``: threshold {override}," in render("wei2020_fig1", config)
    text = render("wei2020_fig3", {**config, "projection": {**projection, "trace": {
        **projection["trace"], "probes": 77, "fit_from_epoch": 3.5}}})  # fmt: skip
    assert "with 77 Hessian-vector products" in text and "from epoch 3.5 on" in text
    setting = next(iter(config["runs"]))
    changed = {**curvature, "n_samples": 321, "subset_seed": 9, "every": 7}
    text = render("curvature", {**config, "curvature": changed}, setting=setting)
    assert "over 321 training samples (seed 9)" in text and "at checkpoints 0, 7, 14, ..." in text
    run = {**config["runs"][setting], "epochs": 13}
    text = render("training", {**config, "runs": {**config["runs"], setting: run}}, setting=setting)
    assert "13 epochs" in text and f"learning rate {run['optimizer']['lr']}" in text
