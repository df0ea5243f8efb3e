"""OCI state, bundle config and storage metadata -> entry fields (shieldaudit.hook.ocistate)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shieldaudit.core.errors import InvalidContainerIdError, UsageError
from shieldaudit.hook import ocistate

CID = "0123456789abcdef" * 4
BUNDLE = f"/var/lib/containers/storage/overlay-containers/{CID}/userdata"


def state_bytes(**fields) -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "id": CID, **fields}).encode()


@pytest.mark.parametrize(
    ("fields", "status", "pid", "bundle"),
    [
        ({"status": "creating", "pid": 4242, "bundle": BUNDLE}, "creating", 4242, BUNDLE),
        ({"status": "created", "pid": 0, "bundle": BUNDLE}, "created", None, BUNDLE),
        ({"status": "stopped", "bundle": BUNDLE}, "stopped", None, BUNDLE),
        ({"status": "running", "pid": 7, "bundlePath": BUNDLE}, "running", 7, BUNDLE),
        ({"pid": True, "bundle": "relative/path"}, "", None, ""),
        ({"pid": -3, "status": 5, "bundle": "/x\u0000y"}, "", None, ""),
    ],
)
def test_parse_state_variants(fields, status, pid, bundle):
    """runc, crun and Podman states parse: pid 0/absent/bogus is None, bundle or bundlePath."""
    state = ocistate.parse_state(state_bytes(**fields))

    assert (state.container_id, state.status, state.pid, state.bundle) == (CID, status, pid, bundle)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no OCI state"),
        (b"  \n\t", "no OCI state"),
        (b"{not json", "not JSON"),
        (b'{"id": 1} trailing', "not JSON"),
        (b"[1, 2]", "not a JSON object but an array"),
        (b'"text"', "not a JSON object but a string"),
        (b"null", "not a JSON object but null"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_parse_state_refuses_bad_documents(data, message):
    """Empty, non-JSON, non-object, non-UTF-8 and absurdly nested stdin are one UsageError."""
    with pytest.raises(UsageError, match=message):
        ocistate.parse_state(data)


@pytest.mark.parametrize(
    "bad_id",
    ["../../etc/passwd", CID.upper(), CID[:-1], CID + "0", CID[:-1] + "/", "", 12, None, "é" * 64],
)
def test_parse_state_refuses_hostile_ids(bad_id):
    """Anything but 64 lower-case hex characters is refused, so it never becomes a path."""
    data = json.dumps({"id": bad_id, "status": "creating"}).encode()

    with pytest.raises(InvalidContainerIdError):
        ocistate.parse_state(data)


@given(st.binary(max_size=300))
def test_parse_state_only_raises_usage_errors(data):
    """Arbitrary bytes never escape as anything but a UsageError (or a valid state)."""
    try:
        state = ocistate.parse_state(data)
    except UsageError:
        return
    assert ocistate.is_container_id(state.container_id)


def test_annotations_are_bounded_and_sorted():
    """At most 32 annotations are kept (sorted), keys and values clipped, non-strings dropped."""
    many = {f"k{i:03d}": "v" * 1000 for i in range(100)}
    many["bad"] = 5

    kept = ocistate.string_map(many)

    assert list(kept) == [f"k{i:03d}" for i in range(32)]
    assert all(len(v) == ocistate.MAX_ANNOTATION_VALUE_CHARS for v in kept.values())
    assert kept["k000"].endswith("…")


def test_command_is_shell_quoted_and_clipped():
    """The detail is the command line, quoted like a shell would read it, and at most 512 chars."""
    config = {"process": {"args": ["sh", "-c", "echo 'hi' there", 3]}}

    assert ocistate.command_of(config) == "sh -c 'echo '\"'\"'hi'\"'\"' there'"
    huge = ocistate.command_of({"process": {"args": ["x" * 100] * 100_000}})
    assert len(huge) == ocistate.MAX_DETAIL_CHARS
    assert ocistate.command_of({"process": "nope"}) == ""


def test_storage_metadata_path_only_for_podman_layout():
    """containers.json is looked up two levels above <dir>/<id>/userdata bundles only."""
    assert (
        ocistate.storage_metadata_path(BUNDLE, CID)
        == "/var/lib/containers/storage/overlay-containers/containers.json"
    )
    assert ocistate.storage_metadata_path(BUNDLE + "/", CID) is not None
    assert ocistate.storage_metadata_path(BUNDLE, "f" * 64) is None
    assert ocistate.storage_metadata_path("/run/bundles/" + CID, CID) is None
    assert ocistate.storage_metadata_path(f"/{CID}/userdata", CID) is None


def test_storage_info_reads_podman_metadata():
    """Name from names[0], image name from the metadata JSON string, image ID from image."""
    meta = json.dumps({"image-name": "localhost/app:1", "name": "web"})
    records = [
        {"id": "f" * 64, "names": ["other"]},
        {"id": CID, "names": ["web"], "image": "ab" * 32, "metadata": meta},
    ]

    info = ocistate.storage_info(records, CID)

    assert (info.name, info.image, info.image_id) == ("web", "localhost/app:1", "ab" * 32)


@pytest.mark.parametrize(
    "records",
    [
        None,
        {},
        [1, "x"],
        [{"id": CID, "names": [], "metadata": "{broken"}],
        [{"id": CID, "metadata": "[]"}],
    ],
)
def test_storage_info_tolerates_malformed_metadata(records):
    """Missing or malformed storage metadata leaves the fields empty, never fails."""
    info = ocistate.storage_info(records, CID)

    assert (info.name, info.image) == ("", "")


def test_storage_info_falls_back_to_metadata_name():
    """Without names, the name inside Podman's metadata string is used."""
    records = [{"id": CID, "metadata": json.dumps({"name": "frommeta"})}]

    assert ocistate.storage_info(records, CID).name == "frommeta"


def test_entry_fields_prefer_storage_then_bundle():
    """Storage metadata names the container and image; CRI-O annotations are the fallback."""
    state = ocistate.parse_state(state_bytes(status="creating", pid=9, bundle=BUNDLE))
    bundle = ocistate.bundle_info(
        {
            "process": {"args": ["nginx", "-g", "daemon off;"]},
            "annotations": {
                "io.kubernetes.cri-o.ContainerName": "crio-name",
                "io.kubernetes.cri-o.ImageName": "crio-image",
            },
        }
    )

    from_bundle = ocistate.entry_fields("createRuntime", state, bundle)
    storage = ocistate.ContainerInfo(name="podname", image="img:1", image_id="c" * 64)
    from_storage = ocistate.entry_fields("createRuntime", state, bundle, storage)

    assert from_bundle["container"] == "crio-name"
    assert from_bundle["image"] == "crio-image"
    assert from_bundle["detail"] == "nginx -g 'daemon off;'"
    assert from_bundle["annotations"] == bundle.annotations
    assert (from_storage["container"], from_storage["image"]) == ("podname", "img:1")
    assert from_storage["image_id"] == "c" * 64
    assert from_storage["source"] == "hook"
    assert from_storage["action"] == "createRuntime"
    assert from_storage["pid"] == 9
    assert from_storage["status"] == "creating"


def test_entry_fields_with_nothing_known():
    """With only the state, every core field is present and empty (or null)."""
    state = ocistate.parse_state(state_bytes())

    fields = ocistate.entry_fields("poststop", state)

    assert fields["container"] == fields["image"] == fields["detail"] == ""
    assert fields["pid"] is None
    assert "annotations" not in fields
