"""What the tests install is what the README tells users to install: the adapter rule."""

from __future__ import annotations

import re

import yaml

from tests.integration.monitoring.rulefiles import ROOT


def test_adapter_rule_is_the_readmes() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Autoscaling") :]
    block = re.search(r"```yaml\n(- seriesQuery:.*?)```", section, re.S)
    assert block, "no adapter rule in the README's Autoscaling section"
    documented = yaml.safe_load(block.group(1))
    installed = yaml.safe_load(
        (ROOT / "scripts" / "monitoring.d" / "adapter-rules.yaml").read_text()
    )
    assert installed["rules"] == documented
