"""From what the runtime hands a hook to the fields of one entry (pure functions).

Inputs, all optional but the state itself:

* the OCI state document on stdin (runc, crun and Podman differ: ``status``
  varies, ``pid`` may be 0 or absent, older runtimes say ``bundlePath``);
* ``<bundle>/config.json`` (the OCI runtime spec: command, annotations);
* the container storage metadata next to the bundle: Podman (containers/storage)
  keeps the bundle at ``<graphroot>/<driver>-containers/<id>/userdata`` and the
  names and image of every container in ``containers.json`` two levels up.

JSON is decoded as ``json.loads(strict=False)`` does: a raw control character
inside a string (whoever creates the container controls these files) is kept
as it is, never a reason to lose the entry. The native hook reads them the same way.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

from shieldaudit.core import ids
from shieldaudit.core.actions import HOOK_STAGES
from shieldaudit.core.errors import InvalidContainerIdError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

STAGES = HOOK_STAGES
MAX_DETAIL_CHARS = 512
MAX_ANNOTATIONS = 32
MAX_ANNOTATION_KEY_CHARS = 128
MAX_ANNOTATION_VALUE_CHARS = 256
MAX_SHORT_CHARS = 256
_ELLIPSIS = "…"
_SAFE_ARG = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_",
)
# CRI-O passes the pod's view in annotations; Podman keeps it in storage metadata.
_NAME_ANNOTATIONS = ("io.kubernetes.cri-o.ContainerName", "io.kubernetes.container.name")
_IMAGE_ANNOTATIONS = ("io.kubernetes.cri-o.ImageName", "org.opencontainers.image.ref.name")
_DECODER: Final = json.JSONDecoder(strict=False)


def loads(text: str) -> object:
    """Parse one JSON document, control characters in strings allowed; ValueError otherwise.

    Deeply nested input raises ValueError too (not RecursionError).
    """
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def decode_prefix(text: str) -> object:
    """Parse the one JSON value at the start of ``text``, ignoring what follows it."""
    try:
        value, _end = _DECODER.raw_decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return value


class OciState:
    """The parts of an OCI state document a hook uses."""

    __slots__ = ("annotations", "bundle", "container_id", "pid", "status")

    def __init__(
        self,
        container_id: str,
        status: str = "",
        pid: int | None = None,
        bundle: str = "",
        annotations: dict[str, str] | None = None,
    ) -> None:
        """Hold the validated values."""
        self.container_id = container_id
        self.status = status
        self.pid = pid
        self.bundle = bundle
        self.annotations = annotations or {}


class ContainerInfo:
    """What the bundle and the storage metadata tell about a container."""

    __slots__ = ("annotations", "command", "image", "image_id", "name")

    def __init__(
        self,
        name: str = "",
        image: str = "",
        image_id: str = "",
        command: str = "",
        annotations: dict[str, str] | None = None,
    ) -> None:
        """Hold what is known; empty strings where unknown."""
        self.name = name
        self.image = image
        self.image_id = image_id
        self.command = command
        self.annotations = annotations or {}


def is_container_id(value: object) -> bool:
    """Return whether ``value`` is a full runtime container ID (64 lower-case hex)."""
    return isinstance(value, str) and ids.is_container_id(value)


def clip(text: str, limit: int) -> str:
    """Shorten ``text`` to at most ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def parse_json_object(data: bytes, what: str) -> dict[str, object]:
    """Decode UTF-8 JSON that must be an object; raise UsageError naming ``what``."""
    if not data.strip():
        raise UsageError(f"{what} is empty")
    try:
        value = loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} is not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} is not a JSON object but {_json_type(value)}")
    return value


def parse_state(data: bytes) -> OciState:
    """Validate the OCI state document a runtime writes to a hook's stdin.

    Raises:
        UsageError: empty, not JSON, or not an object.
        InvalidContainerIdError: ``id`` is not a full 64-hex ID (never used as a path).
    """
    if not data.strip():
        raise UsageError("no OCI state on stdin: the runtime passes it; run this as an OCI hook")
    state = parse_json_object(data, "OCI state on stdin")
    container_id = state.get("id")
    if not is_container_id(container_id):
        raise InvalidContainerIdError(
            container_id if isinstance(container_id, str) else repr(container_id)
        )
    assert isinstance(container_id, str)  # noqa: S101 -- is_container_id checked it
    status = state.get("status")
    bundle = state.get("bundle", state.get("bundlePath"))
    return OciState(
        container_id,
        clip(status, 32) if isinstance(status, str) else "",
        _pid(state.get("pid")),
        bundle if isinstance(bundle, str) and _usable_path(bundle) else "",
        string_map(state.get("annotations")),
    )


def _pid(value: object) -> int | None:
    # 0 (createContainer, startContainer, Podman's poststop) means "no process".
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _usable_path(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("/")
        and "\0" not in value
        and len(value) <= 4096
    )


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def string_map(value: object) -> dict[str, str]:
    """Keep the string-to-string pairs of an annotations object, bounded and sorted.

    At most :data:`MAX_ANNOTATIONS` keys (the first in sorted order), each key
    and value clipped, so a container cannot bloat every entry of its trail.
    """
    if not isinstance(value, dict):
        return {}
    pairs = sorted((k, v) for k, v in value.items() if isinstance(k, str) and isinstance(v, str))
    return {
        clip(k, MAX_ANNOTATION_KEY_CHARS): clip(v, MAX_ANNOTATION_VALUE_CHARS)
        for k, v in pairs[:MAX_ANNOTATIONS]
    }


def quote_arg(arg: str) -> str:
    """Quote one argument the way a POSIX shell would read it back (like shlex.quote)."""
    if arg and _SAFE_ARG.issuperset(arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def command_of(config: Mapping[str, object]) -> str:
    """Return the container's command line (``process.args``), shell-quoted and clipped."""
    process = config.get("process")
    if not isinstance(process, dict):
        return ""
    args = process.get("args")
    if not isinstance(args, list):
        return ""
    words = []
    total = 0
    for arg in args:
        if not isinstance(arg, str):
            continue
        word = quote_arg(arg)
        words.append(word)
        total += len(word) + 1
        if total > MAX_DETAIL_CHARS:  # stop early: args may be huge
            break
    return clip(" ".join(words), MAX_DETAIL_CHARS)


def bundle_info(config: Mapping[str, object]) -> ContainerInfo:
    """Return what ``<bundle>/config.json`` tells: command, annotations, CRI-O's names."""
    annotations = string_map(config.get("annotations"))
    return ContainerInfo(
        name=_first(annotations, _NAME_ANNOTATIONS),
        image=_first(annotations, _IMAGE_ANNOTATIONS),
        command=command_of(config),
        annotations=annotations,
    )


def _first(annotations: Mapping[str, str], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = annotations.get(key)
        if value:
            return clip(value, MAX_SHORT_CHARS)
    return ""


def storage_metadata_path(bundle: str, container_id: str) -> str | None:
    """Return the ``containers.json`` that describes the container, if the layout is Podman's.

    Only ``<dir>/<id>/userdata`` bundles qualify, so a bundle elsewhere never
    makes the hook read an unrelated file.
    """
    parts = bundle.rstrip("/").rsplit("/", 2)
    if len(parts) != 3 or parts[2] != "userdata" or parts[1] != container_id or not parts[0]:
        return None
    return parts[0] + "/containers.json"


def storage_info(containers: object, container_id: str) -> ContainerInfo:
    """Find the container in containers/storage's ``containers.json`` list.

    Returns the first name, the image name (from the ``metadata`` JSON string
    Podman stores) and the image ID; empty values when absent or malformed.
    """
    if not isinstance(containers, list):
        return ContainerInfo()
    for record in containers:
        if isinstance(record, dict) and record.get("id") == container_id:
            return _storage_record(record)
    return ContainerInfo()


def _storage_record(record: Mapping[str, object]) -> ContainerInfo:
    names = record.get("names")
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else ""
    image_id = record.get("image")
    image = ""
    metadata = record.get("metadata")
    if isinstance(metadata, str) and metadata:
        try:
            meta = loads(metadata)
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            value = meta.get("image-name")
            image = value if isinstance(value, str) else ""
            if not name and isinstance(meta.get("name"), str):
                name = str(meta["name"])
    return ContainerInfo(
        name=clip(name, MAX_SHORT_CHARS),
        image=clip(image, MAX_SHORT_CHARS),
        image_id=clip(image_id, MAX_SHORT_CHARS) if isinstance(image_id, str) else "",
    )


def entry_fields(
    stage: str,
    state: OciState,
    bundle: ContainerInfo | None = None,
    storage: ContainerInfo | None = None,
) -> dict[str, object]:
    """Build the fields of a ``source=hook`` entry (the writer adds seq, ts, id, chain).

    ``detail`` is the command; extra keys: ``status`` (the runtime's word),
    ``bundle``, ``image_id`` when known, and the bounded ``annotations``
    (those of the state document, else of config.json).
    """
    bundle = bundle or ContainerInfo()
    storage = storage or ContainerInfo()
    fields: dict[str, object] = {
        "source": "hook",
        "action": stage,
        "container": storage.name or bundle.name,
        "image": storage.image or bundle.image or storage.image_id,
        "pid": state.pid,
        "exit_code": None,
        "dest": "",
        "detail": bundle.command,
        "status": state.status,
        "bundle": clip(state.bundle, MAX_SHORT_CHARS * 4),
    }
    if storage.image_id:
        fields["image_id"] = storage.image_id
    annotations = state.annotations or bundle.annotations
    if annotations:
        fields["annotations"] = annotations
    return fields
