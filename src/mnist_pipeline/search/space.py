"""A search space in Hydra's override syntax, as Optuna distributions.

model.hidden: choice(64, 128, 256)        -> CategoricalDistribution
model.dropout: interval(0.0, 0.5)          -> FloatDistribution
optimizer.lr: tag(log, interval(1e-4, 1e-2)) -> FloatDistribution(log=True)
data.batch_size: range(32, 257, 32)        -> IntDistribution(32, 256, step=32)
trainer.max_epochs: 5                      -> fixed, passed to every trial
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mnist_pipeline.config import ConfigError
from mnist_pipeline.errors import first_line


def checked_search(
    settings: Any, arguments: list[str]
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """`search_space` of `hydra.sweeper.params` and the command line's `arguments`, after a
    check of the counts of `hydra.sweeper` (its schema makes them integers): a `ConfigError`
    for a count below 1 or an empty space. Checked before the sweep's parent MLflow run is
    opened, too."""
    problems = [
        f"hydra.sweeper.{key}={settings[key]}: expected a whole number >= 1"
        for key in ("n_trials", "n_jobs", "max_failures", "heartbeat_interval")
        if settings[key] < 1
    ]
    if settings.grace_period is not None and settings.grace_period < 1:
        problems.append(
            f"hydra.sweeper.grace_period={settings.grace_period}: expected null or a whole "
            "number >= 1"
        )
    if problems:
        raise ConfigError("\n".join(problems))
    params = [f"{key}={value}" for key, value in (settings.params or {}).items()]
    return search_space([*params, *arguments])


def search_space(overrides: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """({key: distribution} of the sweeping overrides, {key: value} of the fixed ones)."""
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            distributions[key] = distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return distributions, fixed


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweeping override (choice, range, interval); a
    `ConfigError` naming it for a space with nothing in it (`range(5,5)`, `interval(1,0)`)."""
    value = override.value()
    integers = override.is_range_sweep() and not value.shuffle
    integers = integers and all(isinstance(n, int) for n in (value.start, value.stop, value.step))
    try:
        if integers:  # range(start, stop, step): stop excluded, as in Python and Hydra's grid
            last = value.start + value.step * ((value.stop - value.start - 1) // value.step)
            return IntDistribution(value.start, last, step=value.step)
        if override.is_choice_sweep() or override.is_range_sweep():  # the values Hydra lists
            choices: list[Any] = list(override.sweep_iterator(transformer=Transformer.encode))
            return CategoricalDistribution(choices)
        if override.is_interval_sweep():  # Hydra makes both ends floats; integers: range(...)
            return FloatDistribution(value.start, value.end, log="log" in value.tags)
    except ValueError as error:  # Optuna's own check: `low <= high` must hold, ...
        raise ConfigError(
            f"{override.input_line}: an empty search space ({first_line(error).rstrip('.')}); "
            "expected a non-empty choice, range or interval"
        ) from None
    raise ConfigError(
        f"hydra.sweeper.params.{override.get_key_element()}: {override.input_line} is not a "
        "search space; expected choice(...), range(...) or interval(...)"
    )
