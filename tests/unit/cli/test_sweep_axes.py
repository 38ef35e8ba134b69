"""Which overrides are sweep axes, and their values (issue 32: a value with a comma could not be
given at all; a sweep started without saying how many points it has)."""

from __future__ import annotations

from launcher.cli.sweep import split_overrides
from launcher.slurm.sbatch import split_values, sweep_tasks


def test_a_quoted_comma_is_part_of_one_value():
    assert split_values("1e-3,3e-3") == ["1e-3", "3e-3"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert split_values('"x, y"') == ['"x, y"']
    fixed, axes = split_overrides(("description='one, two'", "optimizer.lr=1e-3,3e-3", "model.sizes=[1,2]"))
    assert fixed == ("description='one, two'", "model.sizes=[1,2]") and axes == ("optimizer.lr=1e-3,3e-3",)
    assert sweep_tasks(("description='a,b',c",)) == [("description='a,b'",), ("description=c",)]
