"""The long table: one row per token (CSV, TSV, Parquet, JSON Lines), its column roles found by name.

Roles, first match wins (names match regardless of case, as for `score`), each overridable:
the document id (``--doc``), the log-probability (``--logprob``), the byte length (``--bytes``),
the mask (``--mask``: 1 / true is scored), the token text (``--text``) and ``--by`` groups.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..columns import column_not_found, find_column
from ..errors import InputError
from .readers import RawBatch, is_json, open_text, stdin_is_json

DOC_NAMES = ("doc_id", "document_id", "doc", "document", "sequence_id", "seq_id", "sample_id", "example_id", "id")
LOGPROB_NAMES = ("logprob", "log_prob", "logprobs", "token_logprob", "token_log_prob", "log_probability",
                 "logp", "lp")
BYTES_NAMES = ("bytes", "n_bytes", "num_bytes", "byte_length", "token_bytes", "byte_len")
MASK_NAMES = ("mask", "loss_mask", "label_mask", "scored")
TEXT_NAMES = ("token", "token_text", "text", "piece", "decoded_token", "token_str")
LOSS_NAMES = ("nll", "loss", "token_nll", "neg_logprob")


@dataclass
class Roles:
    doc: str
    logprob: str
    bytes: str | None = None
    mask: str | None = None
    text: str | None = None
    groups: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.doc, self.logprob, self.bytes, self.mask, self.text) if c] + self.groups


def _role(names: list[str], explicit: str | None, defaults: Sequence[str], source: str, role: str,
          required: bool = False) -> str | None:
    if explicit:
        found = find_column(names, explicit)
        if found is None:
            raise column_not_found(names, explicit, source, role)
        return found
    for wanted in defaults:
        found = find_column(names, wanted)
        if found is not None:
            return found
    if required:
        hint = ""
        loss = next((find_column(names, n) for n in LOSS_NAMES if find_column(names, n)), None)
        if role == "log-probability" and loss:
            hint = f"; {loss!r} looks like a loss: nll tokens reads log-probabilities (<= 0), negate it"
        option = {"document id": "--doc", "log-probability": "--logprob"}[role]
        raise InputError(source, f"no {role} column (looked for {', '.join(defaults)}; name it with "
                         f"{option}{hint})")
    return None


def resolve_roles(names: list[str], source: str, *, doc: str | None, logprob: str | None, bytes: str | None,
                  mask: str | None, text: str | None, by: Sequence[str]) -> Roles:
    roles = Roles(_role(names, doc, DOC_NAMES, source, "document id", True),  # type: ignore[arg-type]
                  _role(names, logprob, LOGPROB_NAMES, source, "log-probability", True),  # type: ignore[arg-type]
                  _role(names, bytes, BYTES_NAMES, source, "byte length"),
                  _role(names, mask, MASK_NAMES, source, "mask"),
                  _role(names, text, TEXT_NAMES, source, "token text"))
    for column in by:
        found = find_column(names, column)
        if found is None:
            raise column_not_found(names, column, source, "--by")
        roles.groups.append(found)
    taken = list(roles.columns)
    if len(set(taken)) != len(taken):
        raise InputError(source, f"one column plays two roles: {taken}")
    return roles


def _types(roles: Roles, schema) -> dict:
    import pyarrow as pa

    types = {roles.doc: pa.string(), roles.logprob: pa.float64()}
    if roles.bytes:
        types[roles.bytes] = pa.int64()
    if roles.text:
        types[roles.text] = pa.string()
    for column in roles.groups:
        types[column] = pa.string()
    if roles.mask and schema.field(roles.mask).type not in (pa.bool_(),):
        types[roles.mask] = pa.float64()
    return types


def json_schema_names(path: str) -> list[str]:
    from .readers import first_object

    first = first_object(path)
    if not isinstance(first, dict):
        raise InputError(path, "line 1 is not a JSON object")
    return list(first)


def read_table(paths: Sequence[str], **options) -> Iterator[RawBatch]:
    """Every file's batches; the roles are found in the first file and must exist in the others."""
    from ..readers import Source, _open_stream, open_source

    roles = None
    for path in paths:
        if isinstance(path, str) and (is_json(path) or (path == "-" and stdin_is_json())):
            names = json_schema_names(path)
            roles = roles or resolve_roles(names, path, **options)
            missing = [c for c in roles.columns if c not in names]
            if missing:
                raise InputError(path, f"columns missing: {missing}")
            yield from _json_batches(path, roles)
            continue
        if isinstance(path, str) and path == "-":  # its head was peeked at (detect): read it through the replay
            source = _open_stream(open_text("-"), "<stdin>")
        else:
            source = open_source(path) if isinstance(path, str) else Source.from_table(path)
        roles = roles or resolve_roles(source.schema.names, source.name, **options)
        missing = [c for c in roles.columns if c not in source.schema.names]
        if missing:
            raise InputError(source.name, f"columns missing: {missing}")
        for chunk in source.batches(roles.columns, _types(roles, source.schema)):
            yield _raw(chunk.batch, roles, source.name, chunk.first_row)


def _json_batches(path: str, roles: Roles) -> Iterator[RawBatch]:
    import pyarrow as pa
    import pyarrow.json as pj

    # Numbers are typed up front; ids, text and groups as JSON has them (1 or "1"), made text below.
    schema = pa.schema([(roles.logprob, pa.float64())] + ([(roles.bytes, pa.int64())] if roles.bytes else []))
    row = 1
    try:
        reader = pj.open_json(open_text(path), read_options=pj.ReadOptions(block_size=1 << 20),
                              parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer"))
        for batch in reader:
            if batch.num_rows:
                yield _raw(_as_text(batch, [roles.doc, roles.text, *roles.groups], path), roles, path, row)
                row += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(path, f"cannot read JSON Lines after row {row - 1}: {str(exc).splitlines()[0]}") from None


def _as_text(batch, columns: list, path: str):
    """The given columns of a JSON batch as strings (ids written as numbers included)."""
    import pyarrow as pa

    arrays = {name: batch.column(name) for name in batch.schema.names}
    for name in columns:
        if name and name in arrays and arrays[name].type != pa.string():
            column = arrays[name]
            if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type) or
                    pa.types.is_null(column.type) or pa.types.is_floating(column.type) or
                    pa.types.is_boolean(column.type)):
                raise InputError(path, f"column {name!r} holds {column.type}, not text or numbers")
            arrays[name] = column.cast(pa.string())
    return pa.RecordBatch.from_pydict(arrays)


def _raw(batch, roles: Roles, source: str, first_row: int) -> RawBatch:
    import pyarrow.compute as pc

    n = batch.num_rows
    ll = batch.column(roles.logprob).to_numpy(zero_copy_only=False).astype(np.float64)
    text = batch.column(roles.text) if roles.text else None
    nbytes = None
    if roles.bytes:
        values = batch.column(roles.bytes)
        nbytes = pc.fill_null(values, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        negative = np.flatnonzero(nbytes < -1 if values.null_count else nbytes < 0)
        if len(negative):
            raise InputError(source, "a byte length is negative", roles.bytes, rows=(first_row + negative).tolist())
        if text is not None:
            nbytes = np.where(nbytes < 0, pc.binary_length(pc.fill_null(text, "")).to_numpy(zero_copy_only=False),
                              nbytes)
    elif text is not None:
        nbytes = pc.binary_length(pc.fill_null(text, "")).to_numpy(zero_copy_only=False).astype(np.int64)
    columns = {"doc": roles.doc, "logprob": roles.logprob, "bytes": roles.bytes, "mask": roles.mask,
               "text": roles.text}
    return RawBatch(source, batch.column(roles.doc), ll, first_row + np.arange(n, dtype=np.int64), nbytes=nbytes,
                    mask=batch.column(roles.mask) if roles.mask else None, text=text,
                    groups={c: batch.column(c) for c in roles.groups}, columns=columns)
