"""Finding one container in containers.json without parsing the host's whole list."""

from __future__ import annotations

import json

from shieldaudit.hook.run import storage_record

CID = "d" * 64


def _record(cid: str, name: str, image: str) -> dict[str, object]:
    metadata = {"image-name": image, "image-id": "e" * 64, "name": name}
    return {
        "id": cid,
        "names": [name],
        "image": "e" * 64,
        "layer": "f" * 64,
        "metadata": json.dumps(metadata),
        "created": "2026-11-23T10:00:00Z",
    }


def _file(records: list[dict[str, object]], **dump: object) -> bytes:
    return json.dumps(records, separators=(",", ":"), **dump).encode()  # type: ignore[arg-type]


def test_found_among_thousands_as_containers_storage_writes_it():
    """The record in the middle of 5,000 others gives its name and image."""
    others = [_record(f"{i:064x}", f"c{i}", "localhost/other:1") for i in range(5000)]
    data = _file([*others[:2500], _record(CID, "web", "localhost/web:2"), *others[2500:]])
    info = storage_record(data, CID)
    assert info.name == "web"
    assert info.image == "localhost/web:2"


def test_other_key_order_falls_back_to_a_full_parse():
    """A writer that does not put id first is still understood (slow path)."""
    record = _record(CID, "db", "localhost/db:1")
    reordered = {k: record[k] for k in ("names", "image", "id", "metadata")}
    info = storage_record(_file([reordered], indent=2), CID)
    assert info.name == "db"


def test_id_only_in_another_record_text_is_not_a_match():
    """The ID appearing inside another record's metadata string does not fool the search."""
    decoy = _record("1" * 64, "decoy", "localhost/decoy:1")
    decoy["metadata"] = json.dumps({"note": f'"id":"{CID}"'})
    info = storage_record(_file([decoy]), CID)
    assert info.name == ""


def test_absent_and_malformed_files_learn_nothing():
    """No record, truncated JSON, or a non-list: empty fields, no exception."""
    assert storage_record(_file([_record("2" * 64, "x", "y")]), CID).name == ""
    truncated = _file([_record(CID, "web", "localhost/web:2")])[:-40]
    assert storage_record(truncated, CID).name == ""
    assert storage_record(b'{"id":"' + CID.encode() + b'"', CID).name == ""
    assert storage_record(b"\xff\xfe not json", CID).name == ""
