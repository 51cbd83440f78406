"""Feeding the head: stored rows -> tensors on the head's device -> scores, batch after batch.

The same code runs on CPU and on CUDA; what differs is only where the bytes go:

* Rows of a store the head reads many times (the broadcast join: :meth:`HeadScorer.score_rows`)
  are made **resident** on the device once when they fit (:class:`DeviceRows`, in the stored
  dtype: float16 or int8, half or a quarter of float32); then only the pairs' row indices cross
  the bus and the gather runs on the device.
* On the CPU (the host *is* the device) such a store is instead **decoded once** to float32
  (:class:`DecodedRows`) when the decoded rows fit :data:`DECODED_LIMIT_BYTES`: a batch is then
  one gather of float32 rows and no conversion. Converting every pair's rows from float16 (or
  int8) per batch was a third of stage two's CPU time with a cheap head (docs/benchmarks.md), and
  a pair's rows are read many times when pairs outnumber texts, as they do in a broadcast join.
* Otherwise rows are gathered on the host into a **pool of reusable buffers**
  (:class:`HostBuffers`; page-locked on CUDA so the copy is asynchronous), never a new (pinned)
  allocation per batch, and copied in the stored dtype.
* On CUDA the copies run on a second stream, so batch k+1's gather and copy overlap batch k's
  head; a buffer is written again only once the copy that read it has finished (its event).
  On CPU the streams and events are absent and the head reads the buffers (or zero-copy views of
  rows already gathered) directly.

Tokens are converted to float32 (and int8 rows scaled) on the device, by the store's decoder
(``pipeline/store_codec.py``). Shapes: B pairs in a batch, R rows of a store, N/M tokens kept,
D token size, H pooled size, C head outputs.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from pipeline.store_codec import SideArrays, dequantize, token_mask
from pipeline.errors import FlagError

# A store is made resident only while it takes at most this share of the device's free memory:
# the rest is for the head's activations at the batch size asked for.
RESIDENT_SHARE = 0.5
# On the CPU, both stores' rows decoded to float32 (twice a float16 store's bytes, four times an
# int8 one's) are kept only up to this size per scorer (one per worker process); beyond it every
# batch decodes the rows it gathered, as on the plain path.
DECODED_LIMIT_BYTES = 1 << 30
_FIELDS = ("tokens", "scales", "num_tokens", "pooled")


def _as_tensor(torch, array: np.ndarray):
    """A numpy array -> a CPU tensor sharing its memory. Arrays viewed on Arrow buffers are
    read-only; torch warns about those, and this module never writes through them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class HostBuffers:
    """Reusable host buffers for batches on their way to the head.

    ``slots`` sets of buffers are used in turn (two: one being copied while the next is filled);
    each buffer, one per field name, grows to the largest batch seen and is then reused, so a
    batch allocates nothing. ``pin``: page-locked (CUDA's asynchronous copies need it; pinning is
    slow, which is why it happens once here and not per batch). ``allocations`` counts the
    buffers made, for the tests and for anyone wondering.
    """

    def __init__(self, torch, pin: bool, slots: int = 2):
        self.torch = torch
        self.pin = pin
        self.allocations = 0
        self._buffers: list[dict] = [{} for _ in range(slots)]
        self._events: list = [None] * slots
        self._turn = 0

    def next_slot(self) -> int:
        """The slot to fill next, once the copy that last read it (if any) has finished."""
        slot, self._turn = self._turn, (self._turn + 1) % len(self._buffers)
        if self._events[slot] is not None:
            self._events[slot].synchronize()
            self._events[slot] = None
        return slot

    def copied(self, slot: int, event) -> None:
        """The copy out of ``slot`` was queued; ``event`` completes when it has read the buffers."""
        self._events[slot] = event

    def buffer(self, slot: int, name: str, rows: int, like: np.ndarray) -> tuple[np.ndarray, object]:
        """(numpy view, tensor view) of ``rows`` rows shaped and typed as ``like``'s rows."""
        held = self._buffers[slot].get(name)
        if held is None or held.shape[0] < rows or tuple(held.shape[1:]) != like.shape[1:] \
                or held.dtype != _as_tensor(self.torch, like[:0]).dtype:
            dtype = _as_tensor(self.torch, like[:0]).dtype
            held = self.torch.empty((rows, *like.shape[1:]), dtype=dtype, pin_memory=self.pin)
            self._buffers[slot][name] = held
            self.allocations += 1
        view = held[:rows]
        return view.numpy(), view


class DeviceRows:
    """A store's arrays held on the device in their stored dtype: rows are gathered there.

    tokens (R, N, D) float16/int8, scales (R,) float32 or None, num_tokens (R,), pooled (R, H) or None.
    """

    def __init__(self, torch, arrays: SideArrays, device: str, reads_tokens: bool = True):
        self.arrays = arrays   # kept, so that the id this is cached under stays theirs
        fields = arrays if reads_tokens else arrays._replace(tokens=None)
        self.tensors = {name: None if value is None else _as_tensor(torch, np.ascontiguousarray(value)).to(device)
                        for name, value in zip(_FIELDS, fields)}

    def take(self, rows) -> dict:
        """(B,) int64 row indices on the device -> field -> (B, ...) tensors on the device."""
        return {name: None if value is None else value.index_select(0, rows) for name, value in self.tensors.items()}


def resident_bytes(arrays: SideArrays, reads_tokens: bool = True) -> int:
    """Bytes of a store's arrays held resident (without its tokens for a head that reads none)."""
    fields = arrays if reads_tokens else arrays._replace(tokens=None)
    return sum(value.nbytes for value in fields if value is not None)


def decoded_bytes(arrays: SideArrays, reads_tokens: bool) -> int:
    """Bytes of a store's rows decoded for the head: tokens (R, N, D) float32 and mask (R, N) bool
    when the head reads tokens, pooled (R, H) float32 when kept."""
    rows = len(arrays.num_tokens)
    tokens = 0
    if reads_tokens and arrays.tokens is not None:
        kept, dim = arrays.tokens.shape[1:]
        tokens = rows * kept * (4 * dim + 1)
    pooled = 0 if arrays.pooled is None else rows * arrays.pooled.shape[1] * 4
    return tokens + pooled


class DecodedRows:
    """A store's rows decoded once on the CPU, gathered per batch into reusable buffers.

    decoded: tokens (R, N, D) float32, mask (R, N) bool, pooled (R, H) float32 or None (CPU
    tensors); for a head that reads no tokens, tokens and mask are placeholders expanded from one
    row (no memory), handed on expanded to the batch.
    """

    def __init__(self, arrays: SideArrays, decoded: tuple, placeholder: bool):
        self.arrays = arrays   # kept, so that the id this is cached under stays theirs
        self.decoded = decoded
        self.placeholder = placeholder

    def take(self, rows: np.ndarray, buffers: HostBuffers, slot: int, side_name: str) -> tuple:
        """(B,) row indices -> (tokens (B, N, D) float32, mask (B, N) bool, pooled (B, H) float32 or None)."""
        out = []
        for name, value in zip(("tokens", "mask", "pooled"), self.decoded):
            if value is None:
                out.append(None)
            elif self.placeholder and name != "pooled":
                out.append(value[:1].expand(len(rows), *value.shape[1:]))
            else:
                source = value.numpy()
                target, tensor = buffers.buffer(slot, f"{side_name}.{name}", len(rows), source)
                # numpy's take into ``out`` (mode="clip": no temporary) measured faster than
                # torch.index_select here.
                np.take(source, rows, axis=0, out=target, mode="clip")
                out.append(tensor)
        return tuple(out)


class HeadScorer:
    """A student's head on one device, fed stored rows in batches of ``batch_size`` pairs.

    ``score(left, right)``: rows already gathered (the shuffle join carries them with the pairs).
    ``score_rows(left_arrays, left_rows, right_arrays, right_rows)``: a store's arrays and the
    pairs' rows in them (the broadcast join); gathered on the device when the store is resident.

    Options: ``resident`` (None: on CUDA when both stores take at most :data:`RESIDENT_SHARE` of
    the free memory; never on CPU, where the host *is* the device and the pool's gather is the
    one copy); ``decode_once`` (None: on CPU when both stores' decoded rows take at most
    :data:`DECODED_LIMIT_BYTES`; :class:`DecodedRows`); ``pin`` (None: on CUDA);
    ``mixed_precision`` (bf16 autocast on CUDA, as ``encoders/device.py`` decides; False: fp32). Opt-in speed-ups of the head itself
    (``score_pairs --compile``, ``--head-quantize int8``): ``compile`` runs it through
    ``torch.compile`` (the heads trace without a graph break); ``quantize="int8"`` replaces its
    linear layers by dynamically quantized int8 ones (CPU only). Both change scores by rounding
    only (tests/heads/test_compile_quantize.py states the bounds).
    """

    def __init__(self, student, device: str = "cpu", batch_size: int = 8192, *, compile: bool = False,
                 quantize: str | None = None, mixed_precision: bool = True, resident: bool | None = None,
                 pin: bool | None = None, decode_once: bool | None = None):
        import torch
        from encoders.device import run_head  # torch: imported where a scorer is made, not with this module

        refused = head_option_refused(device, compile, quantize)
        if refused:
            raise FlagError(refused)
        self.torch = torch
        self.run_head = run_head
        self.student = student
        self.device = device
        self.batch_size = batch_size
        self.mixed_precision = mixed_precision
        self.num_outputs = student.config.num_outputs
        # A head that never reads the token embeddings (the pooled-cos baseline) is given
        # placeholders of the right shape: its pairs cost no token gather, conversion or copy.
        self.reads_tokens = getattr(student.head, "reads_tokens", True)
        if quantize == "int8":
            from heads._common import quantize_int8
            try:
                student.head = quantize_int8(student.head)
            except ValueError as err:     # a head with nothing to quantize (the pooled-cos baseline)
                raise FlagError(f"--head-quantize int8 is not allowed for this model: {err}") from err
        if compile:
            student.head = torch.compile(student.head, dynamic=True)
        cuda = torch.device(device).type == "cuda"
        self.buffers = HostBuffers(torch, pin=cuda if pin is None else pin)
        self.resident = resident
        self._resident_stores: dict[int, DeviceRows] = {}
        self.decode_once = decode_once
        self._decoded_stores: dict[int, DecodedRows] = {}
        self._copy_stream = torch.cuda.Stream(device) if cuda else None

    # ----------------------------------------------------------------- entry points

    def score(self, left: SideArrays, right: SideArrays) -> tuple[np.ndarray, np.ndarray | None]:
        """B gathered pairs -> scores (B,) float32 and, for C > 1 classes, probs (B, C) float32."""
        def feed(start: int, stop: int):
            part = slice(start, stop)
            fields = {}
            for side_name, side in (("left", left), ("right", right)):
                fields[side_name] = {name: None if value is None else value[part] for name, value in zip(_FIELDS, side)}
            return self._to_device(fields)
        return self._run(len(left.num_tokens), feed)

    def score_rows(self, left: SideArrays, left_rows: np.ndarray, right: SideArrays,
                   right_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Stores' arrays (R rows each) and the B pairs' rows in them -> as :meth:`score`."""
        decoded = self._decoded_pair(left, right)
        if decoded is not None:
            def feed(start: int, stop: int):
                slot = self.buffers.next_slot()
                return {side_name: store.take(rows[start:stop], self.buffers, slot, side_name)
                        for side_name, store, rows in (("left", decoded[0], left_rows), ("right", decoded[1], right_rows))}
            return self._run(len(left_rows), feed)
        stores = self._resident_pair(left, right)
        if not self.reads_tokens:
            left, right = left._replace(tokens=None), right._replace(tokens=None)
        if stores is None:
            def feed(start: int, stop: int):
                fields = {}
                slot = None
                for side_name, arrays, rows in (("left", left, left_rows), ("right", right, right_rows)):
                    picked = rows[start:stop]
                    fields[side_name] = {}
                    for name, value in zip(_FIELDS, arrays):
                        if value is None:
                            fields[side_name][name] = None
                            continue
                        if slot is None:
                            slot = self.buffers.next_slot()
                        out, _ = self.buffers.buffer(slot, f"{side_name}.{name}", len(picked), value)
                        # The one copy on the host, store -> buffer. mode="clip": with the default
                        # ("raise") numpy gathers into a temporary and copies that into ``out``.
                        np.take(value, picked, axis=0, out=out, mode="clip")
                        fields[side_name][name] = out
                return self._to_device(fields, slot)
        else:
            def feed(start: int, stop: int):
                slot = self.buffers.next_slot()
                fields = {}
                for side_name, store, rows in (("left", stores[0], left_rows), ("right", stores[1], right_rows)):
                    picked = rows[start:stop]
                    out, tensor = self.buffers.buffer(slot, f"{side_name}.rows", len(picked), picked)
                    np.copyto(out, picked)
                    fields[side_name] = store.take(self._upload([tensor], slot)[0].long())
                return {side_name: self._decode(values, side_name) for side_name, values in fields.items()}
        return self._run(len(left_rows), feed)

    # ----------------------------------------------------------------- the parts

    def _decoded_pair(self, left: SideArrays, right: SideArrays) -> tuple[DecodedRows, DecodedRows] | None:
        """Both stores decoded on the CPU, on first use; None on CUDA or when they do not fit."""
        if self._copy_stream is not None or self.torch.device(self.device).type != "cpu":
            return None
        decode = self.decode_once
        if decode is None:
            needed = decoded_bytes(left, self.reads_tokens) + decoded_bytes(right, self.reads_tokens)
            decode = needed <= DECODED_LIMIT_BYTES
        if not decode:
            return None
        pair = []
        for side_name, arrays in (("left", left), ("right", right)):
            key = id(arrays)
            held = self._decoded_stores.get(key)
            if held is None or held.arrays is not arrays:
                fields = arrays if self.reads_tokens else arrays._replace(tokens=None)
                values = {name: None if value is None else _as_tensor(self.torch, np.ascontiguousarray(value))
                          for name, value in zip(_FIELDS, fields)}
                held = self._decoded_stores[key] = DecodedRows(arrays, self._decode(values, side_name),
                                                               placeholder=not self.reads_tokens)
            pair.append(held)
        return pair[0], pair[1]

    def _resident_pair(self, left: SideArrays, right: SideArrays) -> tuple[DeviceRows, DeviceRows] | None:
        """Both stores on the device, uploaded on first use; None when they stay on the host."""
        resident = self.resident
        if resident is None:
            if self._copy_stream is None:
                return None
            free, _ = self.torch.cuda.mem_get_info(self.device)
            needed = resident_bytes(left, self.reads_tokens) + resident_bytes(right, self.reads_tokens)
            resident = needed <= RESIDENT_SHARE * free
        if not resident:
            return None
        pair = []
        for arrays in (left, right):
            key = id(arrays)
            if key not in self._resident_stores or self._resident_stores[key].arrays is not arrays:
                self._resident_stores[key] = DeviceRows(self.torch, arrays, self.device, self.reads_tokens)
            pair.append(self._resident_stores[key])
        return pair[0], pair[1]

    def _upload(self, tensors: list, slot: int | None) -> list:
        """Host tensors -> the device. CUDA: on the copy stream, without blocking (pinned
        buffers), the compute stream waiting for it; the slot's buffers are free again once the
        copy's event completes. CPU: the tensors as they are."""
        if self._copy_stream is None:
            return tensors
        torch = self.torch
        compute = torch.cuda.current_stream(self.device)
        # The copy stream does not wait for the head: batch k+1's copy overlaps batch k's head.
        # Device memory stays safe through record_stream below (the allocator reuses a block
        # only once the compute stream's work on it is done).
        with torch.cuda.stream(self._copy_stream):
            moved = [t.to(self.device, non_blocking=True) for t in tensors]
            event = torch.cuda.Event()
            event.record(self._copy_stream)
        compute.wait_stream(self._copy_stream)
        for tensor in moved:
            tensor.record_stream(compute)   # allocated on the copy stream, used on the compute one
        if slot is not None:
            self.buffers.copied(slot, event)
        return moved

    def _to_device(self, fields: dict, slot: int | None = None) -> dict:
        """side -> field -> numpy rows (a buffer, or a view of gathered rows) -> side -> head inputs."""
        torch = self.torch
        if self._copy_stream is not None and slot is None:
            # Rows not yet in the pool (``score``): into a pinned buffer first, so the copy is asynchronous.
            slot = self.buffers.next_slot()
            for side_name, values in fields.items():
                for name, value in values.items():
                    if value is not None:
                        out, _ = self.buffers.buffer(slot, f"{side_name}.{name}", len(value), value)
                        np.copyto(out, value)
                        values[name] = out
        names = [(s, n) for s, values in fields.items() for n, v in values.items() if v is not None]
        moved = self._upload([_as_tensor(torch, np.ascontiguousarray(fields[s][n])) for s, n in names], slot)
        on_device = {side_name: dict.fromkeys(_FIELDS) for side_name in fields}
        for (side_name, name), tensor in zip(names, moved):
            on_device[side_name][name] = tensor
        return {side_name: self._decode(values, side_name) for side_name, values in on_device.items()}

    def _decode(self, values: dict, side_name: str) -> tuple:
        """field -> tensor on the device -> (tokens (B, N, D) float32, mask (B, N) bool, pooled (B, H) float32 or None)."""
        torch = self.torch
        pooled = None if values["pooled"] is None else values["pooled"].float()
        num_tokens = values["num_tokens"]
        if values["tokens"] is None:
            # Only heads that say reads_tokens = False get here; they are PairHeads, with these sizes.
            head = self.student.head
            tokens_kept = head.left_tokens if side_name == "left" else head.right_tokens
            batch, shape = len(num_tokens), (tokens_kept, head.dim)
            return (torch.zeros((1, *shape), device=self.device).expand(batch, *shape),
                    torch.ones((1, tokens_kept), dtype=torch.bool, device=self.device).expand(batch, tokens_kept),
                    pooled)
        tokens = values["tokens"]
        scales = None if values["scales"] is None else values["scales"].float()
        return dequantize(tokens.float(), scales), token_mask(num_tokens.long(), tokens.shape[1]), pooled

    def _run(self, total: int, feed: Callable[[int, int], dict]) -> tuple[np.ndarray, np.ndarray | None]:
        """Every batch of ``total`` pairs through ``feed`` and the head; results leave the device once."""
        scores, probs = [], []
        for start in range(0, total, self.batch_size):
            inputs = feed(start, min(total, start + self.batch_size))
            logits = self.run_head(self.student, inputs["left"], inputs["right"], self.device, self.mixed_precision)
            score, prob = self.student.scores_from_logits(logits)
            scores.append(score.float())
            if self.num_outputs > 1:
                probs.append(prob.float())
        if not scores:
            return (np.zeros(0, np.float32),
                    np.zeros((0, self.num_outputs), np.float32) if self.num_outputs > 1 else None)
        torch = self.torch
        joined = (scores[0] if len(scores) == 1 else torch.cat(scores)).cpu().numpy()
        joined_probs = ((probs[0] if len(probs) == 1 else torch.cat(probs)).cpu().numpy()
                        if self.num_outputs > 1 else None)
        return joined, joined_probs


def head_option_refused(device: str, compile: bool, quantize: str | None) -> str | None:
    """Why the head cannot run with these options on ``device`` ("cpu" or "cuda"), in one line,
    or None. int8 dynamic quantization has CPU kernels only; torch.compile needs TorchDynamo's
    support on this platform and Python, and cannot trace dynamically quantized layers."""
    if quantize not in (None, "int8"):
        return f"--head-quantize {quantize!r} is not allowed: choose int8"
    if quantize == "int8" and device != "cpu":
        return (f"--head-quantize int8 is not allowed on {device}: int8 dynamic quantization runs on the CPU only "
                "(use --device cpu, or leave it out on a GPU)")
    if compile and quantize:
        return (f"--compile and --head-quantize {quantize} do not go together: torch.compile cannot trace "
                "dynamically quantized layers; choose one")
    if compile:
        import torch._dynamo
        if not torch._dynamo.is_dynamo_supported():
            return "--compile is not allowed here: torch.compile does not support this platform or Python version"
    return None
