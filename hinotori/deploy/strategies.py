"""The strategies by name: what a service's ``strategy.kind`` and ``--strategy`` may say.

A new strategy is one module with a class that follows ``deploy.base.Strategy`` and one line
below.
"""

from __future__ import annotations

from hinotori.deploy.base import Strategy
from hinotori.deploy.bluegreen import BlueGreen
from hinotori.deploy.canary import Canary
from hinotori.deploy.rolling import Rolling
from hinotori.registry import Registry

STRATEGIES: Registry[type[Strategy]] = Registry("strategy", {
    BlueGreen.name: BlueGreen,
    Canary.name: Canary,
    Rolling.name: Rolling,
})
