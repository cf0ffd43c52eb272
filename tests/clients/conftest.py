"""What every client suite here stands on: one simulator with the chat, code and embedding models, and one
gateway in front of it with accounts required, each module its own; and a user's API key."""

from __future__ import annotations

import pytest

from ..support.clients import SIM_ARGS
from ..support.factories import StartGateway, StartSimulator
from ..support.servers import Gateway
from ..support.simproc import SimProcess


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator(*SIM_ARGS)


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, auth="required")


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.new_user("olga")
