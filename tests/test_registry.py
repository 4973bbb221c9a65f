# The protocol registry (analyzer/protocols/__init__.py): its per-port table
# answers what the specs themselves say.
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from analyzer.protocols import all_protocols, port_hints

HINTED = sorted({port for spec in all_protocols() for port in spec.port_hints})


@given(st.lists(st.one_of(st.sampled_from(HINTED), st.integers(0, 65535)), max_size=3))
def test_port_hints_are_the_specs_hint_ports(ports):
    expected = frozenset(s.name for s in all_protocols() if any(p in s.port_hints for p in ports))
    assert port_hints(tuple(ports)) == expected


def test_the_well_known_ports_hint_their_protocols():
    assert port_hints((21, 40000)) == {"ftp"}
    assert port_hints((50000, 50001)) == frozenset()
