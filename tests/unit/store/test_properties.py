"""Property tests: the entry model round-trips, and the chain holds exactly when untouched."""

from __future__ import annotations

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shieldaudit.core.models import Entry
from shieldaudit.core.settings import StoreSettings
from shieldaudit.store import chain
from shieldaudit.store.verify import verify_container
from shieldaudit.store.writer import TrailWriter
from store_helpers import CID_A, trail

_text = st.text(max_size=40)
_fields = st.fixed_dictionaries(
    {
        "source": st.sampled_from(["hook", "events", "cli"]),
        "action": st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=20),
        "container": _text,
        "image": _text,
        "pid": st.none() | st.integers(min_value=0, max_value=2**31),
        "exit_code": st.none() | st.integers(min_value=-255, max_value=255),
        "dest": _text,
        "detail": _text,
    },
)


@given(fields=_fields, seq=st.integers(min_value=1, max_value=10**9))
def test_entry_model_round_trip(fields, seq):
    """Any entry a writer seals parses back into the model and serialises to the same values."""
    body = chain.build_body(
        {**fields, "seq": seq, "ts": "2026-11-22T10:42:12.211996Z", "container_id": CID_A},
        chain.GENESIS,
        None,
    )
    line, mac = chain.seal(body, None)
    parsed = chain.parse_line(line.rstrip(b"\n"))
    entry = Entry.model_validate(parsed)
    assert entry.mac == mac
    assert entry.model_dump() == parsed
    again = Entry.model_validate_json(json.dumps(entry.model_dump()))
    assert again == entry


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.lists(_fields, min_size=1, max_size=4), min_size=1, max_size=4),
    segment=st.sampled_from([256, 700, 4096]),
)
def test_chain_holds_for_any_sequence_of_appends(tmp_path_factory, batches, segment):
    """Any sequence of appends by successive writers, with any rotation size, verifies."""
    root = tmp_path_factory.mktemp("p") / "root"
    count = 0
    for batch in batches:
        with TrailWriter(
            StoreSettings(root=root, fsync="never", max_segment_bytes=segment, keep_segments=0)
        ) as writer:
            for fields in batch:
                writer.append(CID_A, fields)
                count += 1
    report = verify_container(root, CID_A)
    assert report.ok, [p.render() for p in report.problems]
    assert report.entries == count


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_fails_verification(tmp_path_factory, data):
    """Changing any one byte of any entry line (newlines excluded) makes verify fail."""
    root = tmp_path_factory.mktemp("b") / "root"
    with TrailWriter(StoreSettings(root=root, fsync="never")) as writer:
        for i in range(4):
            writer.append(CID_A, {"source": "cli", "action": "t", "detail": f"d{i}"})
    active = trail(root, CID_A) / "audit.jsonl"
    content = bytearray(active.read_bytes())
    positions = [i for i, b in enumerate(content) if b != ord("\n")]
    index = data.draw(st.sampled_from(positions))
    replacement = data.draw(
        st.integers(min_value=0, max_value=255).filter(
            lambda b: b not in (content[index], ord("\n"))
        )
    )
    content[index] = replacement
    active.write_bytes(bytes(content))
    assert not verify_container(root, CID_A).ok
