"""What a compiled XLA program does per step, read from its HLO text: FLOPs, HBM bytes, collectives.

XLA's `cost_analysis()` counts a while loop's body once. A train step is loops all the way
down: gradient accumulation over microbatches, `scan` over layers, and on TPU the
"windowed einsum" loops the compiler makes of big model-parallel matmuls (collective
matmuls). So this module parses `compiled.as_text()` and walks the call graph from the
entry computation, multiplying every computation by the trip counts of the loops around it:

    entry --while x M--> microbatch body --while x N--> layer body --while x K--> window
      each instruction: dot/convolution FLOPs, HBM bytes it reads and writes,
      collectives (bytes per chip, kind, group size, ICI or data-center network)

Hand-written because no library exposes this: XLA's own HloCostAnalysis is reachable from
Python only for a whole module (the number above), and jax's HLO bindings do not give
per-instruction shapes or loop trip counts of a compiled TPU program.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
    "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e5m2fnuz": 1, "f8e4m3fnuz": 1, "token": 0,
}
# Array shapes inside a (possibly tuple) shape string: dtype, dims, optional layout.
_ARRAY = re.compile(r"\b(pred|token|bf16|[fsuc]\d+|f8\w+)\[([\d,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(.*\) -> .* \{$")
_NAME = re.compile(r"%([\w.\-]+)")

COLLECTIVE_KINDS = (
    "all-gather",
    "reduce-scatter",
    "all-reduce",
    "all-to-all",
    "collective-permute",
)
# Instructions that move no data of their own (views, tuples, control flow, markers).
_NO_TRAFFIC = {
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "call",
    "conditional", "after-all", "partition-id", "replica-id", "opt-barrier", "async-start",
    "async-update", "async-done", "copy-start", "copy-done", "send", "recv", "send-done",
    "recv-done", "add-dependency", "domain",
}
_COMPUTE = {"fusion", "convolution", "dot", "custom-call"}


class HloParseError(ValueError):
    """The HLO text has a construct this reader cannot account for (it says which)."""


@dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    args: str = ""  # the raw text between the parentheses: constant(2)'s "2", parameter(0)'s "0"

    def attr(self, key: str) -> str | None:
        match = re.search(rf"\b{key}=(\{{[^}}]*\}}|[^,\s]+)", self.attrs)
        return match.group(1) if match else None


@dataclass
class Computation:
    name: str
    instructions: list[Instruction]
    root: str = ""
    by_name: dict[str, Instruction] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {i.name: i for i in self.instructions}
        if not self.root and self.instructions:
            self.root = self.instructions[-1].name

    def root_instruction(self) -> Instruction:
        return self.by_name[self.root]


def _matching(text: str, start: int) -> int:
    """Index just past the bracket that closes the one at text[start]."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    depth, opening, closing = 0, text[start], pairs[text[start]]
    for i in range(start, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i + 1
    raise HloParseError(f"unbalanced {opening!r} in HLO line: {text[:120]}")


def _parse_instruction(line: str) -> tuple[Instruction, bool] | None:
    """(instruction, is_root) of one line of a computation's body."""
    line = line.strip()
    is_root = line.startswith("ROOT ")
    if is_root:
        line = line[5:]
    if not line.startswith("%") or " = " not in line:
        return None
    name, rest = line[1:].split(" = ", 1)
    if rest.startswith("("):  # tuple shape
        end = _matching(rest, 0)
    else:
        end = rest.index(" ")
    shape, rest = rest[:end], rest[end + 1:]
    paren = rest.index("(")
    opcode = rest[:paren]
    close = _matching(rest, paren)
    operands = _NAME.findall(rest[paren:close])
    return Instruction(
        name, shape, opcode, operands, rest[close:], rest[paren + 1 : close - 1]
    ), is_root


def parse_module(text: str) -> tuple[dict[str, Computation], str, int]:
    """(computations by name, entry name, num_partitions) of an HLO module's text."""
    computations: dict[str, Computation] = {}
    entry, current, body, root = None, None, [], ""
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current, body, root = header.group(2), [], ""
            if header.group(1):
                entry = current
        elif line == "}" and current is not None:
            computations[current] = Computation(current, body, root)
            current = None
        elif current is not None:
            parsed = _parse_instruction(line)
            if parsed is not None:
                body.append(parsed[0])
                root = parsed[0].name if parsed[1] else root
    if entry is None:
        raise HloParseError("no ENTRY computation in the HLO text")
    partitions = re.search(r"num_partitions=(\d+)", text)
    return computations, entry, int(partitions.group(1)) if partitions else 1


def arrays(shape: str, hbm_only: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in a shape string; hbm_only drops on-chip memory spaces."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        # TPU layouts name a memory space S(n) for buffers outside HBM: S(1) is on-chip VMEM.
        if hbm_only and layout and "S(1)" in layout:
            continue
        out.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
    return out


def shape_bytes(shape: str, hbm_only: bool = False) -> float:
    return sum(
        math.prod(dims) * DTYPE_BYTES.get(dtype, 4) for dtype, dims in arrays(shape, hbm_only)
    )


def _dims(shape: str) -> tuple[int, ...]:
    found = arrays(shape)
    return found[0][1] if found else ()


def instruction_flops(inst: Instruction, comp: Computation) -> float:
    """2 x multiply-adds of a dot or convolution (other instructions: 0)."""
    if inst.opcode == "dot":
        lhs = _dims(comp.by_name[inst.operands[0]].shape)
        contracting = inst.attr("lhs_contracting_dims") or "{}"
        k = math.prod(lhs[int(d)] for d in re.findall(r"\d+", contracting))
        return 2.0 * math.prod(_dims(inst.shape)) * k
    if inst.opcode == "convolution":
        return _convolution_flops(inst, comp)
    return 0.0


def _window_taps(size: int, in_size: int, out_size: int, stride: int, pad_low: int,
                 lhs_dilation: int, rhs_dilation: int) -> int:
    """(output, kernel) position pairs of one spatial dimension that land on a real input.

    TPU programs express batched matmuls as convolutions over a dilated, padded input:
    taps that land on padding or dilation holes multiply zeros and are not counted (as in
    XLA's HloCostAnalysis).
    """
    import numpy as np

    if size == 1 and pad_low == 0 and lhs_dilation == 1:
        return out_size
    position = (np.arange(out_size)[:, None] * stride + np.arange(size)[None, :] * rhs_dilation
                - pad_low)
    real = (
        (position >= 0)
        & (position <= (in_size - 1) * lhs_dilation)
        & (position % lhs_dilation == 0)
    )
    return int(real.sum())


def _convolution_flops(inst: Instruction, comp: Computation) -> float:
    labels = inst.attr("dim_labels")
    if labels is None or "batch_group_count" in inst.attrs:
        raise HloParseError(f"convolution {inst.name}: no dim_labels or a batch_group_count")
    lhs_labels, rest = labels.split("_")
    kernel_labels, out_labels = rest.split("->")
    lhs = _dims(comp.by_name[inst.operands[0]].shape)
    kernel = _dims(comp.by_name[inst.operands[1]].shape)
    out = _dims(inst.shape)
    window = inst.attr("window") or "{}"

    def field(name: str, spatial: int, default: int) -> list[int]:
        match = re.search(rf"\b{name}=([\d_x]+)", window)
        if not match:
            return [default] * spatial
        return [int(v.split("_")[0]) for v in match.group(1).split("x")]

    spatial = sum(c.isdigit() for c in kernel_labels)
    stride, pad = field("stride", spatial, 1), field("pad", spatial, 0)
    lhs_dilate, rhs_dilate = field("lhs_dilate", spatial, 1), field("rhs_dilate", spatial, 1)
    macs = (
        out[out_labels.index("b")] * out[out_labels.index("f")] * kernel[kernel_labels.index("i")]
    )
    for d in range(spatial):
        macs *= _window_taps(kernel[kernel_labels.index(str(d))], lhs[lhs_labels.index(str(d))],
                             out[out_labels.index(str(d))], stride[d], pad[d], lhs_dilate[d],
                             rhs_dilate[d])
    return 2.0 * macs


@dataclass
class Collective:
    """One collective instruction (counted `multiplier` times per step)."""
    name: str
    kind: str  # one of COLLECTIVE_KINDS
    network: str  # "ici" (inside a pod) or "dcn" (across pods)
    group_size: int
    bytes_per_chip: float  # sent per chip per execution (ring algorithms)
    multiplier: int
    overlapped: bool  # async, with compute scheduled between its start and its done


@dataclass
class StepCost:
    """Per-chip totals of one step, every loop body counted as often as it runs."""
    flops: float = 0.0  # dot + convolution FLOPs per chip
    hbm_bytes: float = 0.0  # bytes read and written by top-level instructions (not collectives)
    roofline_s: float = 0.0  # sum over instructions of max(FLOPs at peak, bytes at HBM bandwidth)
    collectives: list[Collective] = field(default_factory=list)
    loops: list[tuple[str, int]] = field(default_factory=list)  # (while name, trip count)

    def comm_bytes(self, network: str | None = None, kind: str | None = None) -> float:
        return sum(c.bytes_per_chip * c.multiplier for c in self.collectives
                   if network in (None, c.network) and kind in (None, c.kind))


def _replica_groups(inst: Instruction, partitions: int) -> list[list[int]]:
    """Device-id groups of a collective, from any of XLA's printed forms."""
    import numpy as np

    text = inst.attrs
    # Newer XLA: replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}: groups along named axes.
    named = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", text)
    if named:
        axes = re.findall(r"'([^']+)'=(\d+)", named.group(1))
        if not axes or "device_ids" in text[named.end():named.end() + 20]:
            raise HloParseError(f"{inst.name}: replica groups {named.group(0)[:80]} not understood")
        names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
        over = [names.index(a) for a in re.findall(r"'([^']+)'", named.group(2))]
        rest = [k for k in range(len(names)) if k not in over]
        ids = np.arange(math.prod(sizes)).reshape(sizes).transpose(rest + over)
        return ids.reshape(-1, math.prod(sizes[k] for k in over)).tolist()
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
    if iota:
        groups_shape = [int(x) for x in iota.group(1).split(",")]
        reshape = [int(x) for x in iota.group(2).split(",")]
        ids = np.arange(math.prod(reshape)).reshape(reshape)
        if iota.group(3):
            ids = ids.transpose([int(x) for x in iota.group(3).split(",")])
        return ids.reshape(groups_shape).tolist()
    listed = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", text)
    if listed and listed.group(1):
        return [
            [int(x) for x in g.split(",") if x]
            for g in re.findall(r"\{([\d,]*)\}", listed.group(1))
        ]
    pairs = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", text)
    if pairs:
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", pairs.group(1))]
    return [list(range(partitions))]  # no groups: every partition


_RING_FACTOR = {  # bytes a chip sends, per byte of its input, in a ring over n chips
    "all-gather": lambda n: n - 1,
    "reduce-scatter": lambda n: (n - 1) / n,
    "all-reduce": lambda n: 2 * (n - 1) / n,
    "all-to-all": lambda n: (n - 1) / n,
    "collective-permute": lambda n: 1.0,
}
# Cross-pod transfers (TPU multislice) are send/recv pairs run by the megascale runtime.
_MEGASCALE_KIND = {"ALL_REDUCE": "all-reduce", "ALL_GATHER": "all-gather",
                   "REDUCE_SCATTER": "reduce-scatter", "ALL_TO_ALL": "all-to-all",
                   "ONE_TO_ONE": "collective-permute"}


class _Walker:
    def __init__(self, text: str, peak_flops: float, hbm_bandwidth: float, pods: int,
                 devices_per_pod: int | None):
        self.computations, self.entry, self.partitions = parse_module(text)
        self.peak, self.hbm_bw, self.pods = peak_flops, hbm_bandwidth, pods
        self.devices_per_pod = devices_per_pod
        self.cost = StepCost()
        self._fused_flops: dict[str, float] = {}

    def fused_flops(self, name: str) -> float:
        """FLOPs of one execution of a fused (or otherwise called) computation."""
        if name not in self._fused_flops:
            comp = self.computations[name]
            total = 0.0
            for inst in comp.instructions:
                total += instruction_flops(inst, comp)
                for callee in self._callees(inst):
                    total += self.fused_flops(callee)
            self._fused_flops[name] = total
        return self._fused_flops[name]

    @staticmethod
    def _callees(inst: Instruction) -> list[str]:
        if inst.opcode == "while":
            return []
        called = inst.attr("to_apply" if inst.opcode == "call" else "calls")
        names = _NAME.findall(called) if called else []
        branches = inst.attr("branch_computations")
        if branches:
            names += _NAME.findall(branches)
        return names

    def trip_count(self, inst: Instruction, comp: Computation) -> int:
        known = re.search(r'"known_trip_count":\{"n":"(\d+)"', inst.attrs)
        if known:
            return int(known.group(1))
        condition = self.computations[inst.attr("condition").lstrip("%")]
        limit, direction, index = self._loop_limit(condition)
        init = (
            None if index is None else self._constant(comp, comp.by_name[inst.operands[0]], index)
        )
        body = self.computations[inst.attr("body").lstrip("%")]
        step = None if index is None else self._loop_step(body, index)
        if limit is None or init is None or step is None or direction not in ("LT", "LE"):
            raise HloParseError(
                f"while loop {inst.name}: trip count unknown (no known_trip_count, and the "
                f"condition {condition.name} is not `counter < constant` with the body adding a "
                "constant to the counter)")
        return max(0, -(-(limit - init + (1 if direction == "LE" else 0)) // step))

    def _loop_step(self, body: Computation, index: int) -> int | None:
        """The constant the loop body adds to tuple element `index` (the counter)."""
        root = body.root_instruction()
        if root.opcode != "tuple":
            return None
        update = body.by_name[root.operands[index]]
        if update.opcode != "add":
            return None
        for counter, other in (update.operands, update.operands[::-1]):
            gte = body.by_name[counter]
            while gte.opcode in ("copy", "bitcast", "convert"):
                gte = body.by_name[gte.operands[0]]
            if gte.opcode == "get-tuple-element" and gte.attr("index") == str(index):
                step = self._constant(body, body.by_name[other], None)
                return step if step else None
        return None

    def _constant(
        self, comp: Computation, inst: Instruction, tuple_index: int | None
    ) -> int | None:
        """The integer constant an instruction evaluates to, through tuples, copies and bitcasts."""
        for _ in range(16):
            if inst.opcode == "constant":
                return int(inst.args) if re.fullmatch(r"-?\d+", inst.args) else None
            if inst.opcode == "tuple" and tuple_index is not None:
                inst, tuple_index = comp.by_name[inst.operands[tuple_index]], None
            elif inst.opcode in ("copy", "bitcast", "convert") and inst.operands:
                inst = comp.by_name[inst.operands[0]]
            else:
                return None
        return None

    def _loop_limit(self, condition: Computation) -> tuple[int | None, str | None, int | None]:
        """(constant, direction, counter's tuple index) of `counter <direction> constant`."""
        root = condition.root_instruction()
        counter = limit = None
        if root.opcode == "fusion":  # CPU wraps the compare in a fusion: look inside
            fused = self.computations[root.attr("calls").lstrip("%")]
            compare = fused.root_instruction()
            params = {i.name: root.operands[int(i.args)] for i in fused.instructions
                      if i.opcode == "parameter"}
            if compare.opcode == "compare":
                counter, limit = (params.get(o) for o in compare.operands)
        elif root.opcode == "compare":
            compare = root
            counter, limit = compare.operands
        if counter is None or limit is None:
            return None, None, None
        counter_inst = condition.by_name[counter]
        index = int(counter_inst.attr("index")) if counter_inst.opcode == "get-tuple-element" else 0
        value = self._constant(condition, condition.by_name[limit], None)
        return value, compare.attr("direction"), index

    def walk(self, name: str, multiplier: int, async_overlapped: bool | None = None) -> None:
        comp = self.computations[name]
        order = {inst.name: k for k, inst in enumerate(comp.instructions)}
        for inst in comp.instructions:
            if inst.opcode == "while":
                trips = self.trip_count(inst, comp)
                self.cost.loops.append((inst.name, trips))
                self.walk(inst.attr("body").lstrip("%"), multiplier * trips)
                continue
            if inst.opcode == "async-start":  # e.g. a reduce-scatter wrapped to run async
                done = self._done(comp, inst, "async-done")
                for callee in self._callees(inst):
                    self.walk(callee, multiplier, self._overlapped(comp, inst, done, order))
                continue
            if inst.opcode in ("call", "conditional"):
                # A conditional runs one branch: counting each is an upper bound (the TPU
                # programs here use them only for tiny bookkeeping).
                for callee in self._callees(inst):
                    self.walk(callee, multiplier, async_overlapped)
                continue
            collective = (self.collective(inst, comp, order, multiplier)
                          or self.fused_collective(inst, comp, order, multiplier))
            if collective is not None:  # timed on its network, not as HBM traffic
                if async_overlapped is not None:
                    collective.overlapped = async_overlapped
                self.cost.collectives.append(collective)
                continue
            if inst.opcode.endswith("-done"):  # the second half of an async pair
                continue
            flops = instruction_flops(inst, comp) + sum(
                self.fused_flops(c) for c in self._callees(inst))
            traffic = 0.0 if inst.opcode in _NO_TRAFFIC else self.traffic(inst, comp)
            self.cost.flops += multiplier * flops
            self.cost.hbm_bytes += multiplier * traffic
            self.cost.roofline_s += multiplier * max(flops / self.peak, traffic / self.hbm_bw)

    def traffic(self, inst: Instruction, comp: Computation) -> float:
        """HBM bytes an instruction reads and writes; slices of big buffers count as slices."""
        out = shape_bytes(inst.shape, hbm_only=True)
        fused = (
            self.computations.get(inst.attr("calls").lstrip("%"))
            if inst.opcode == "fusion"
            else None
        )
        if inst.opcode == "dynamic-update-slice" or (
                fused is not None and fused.root_instruction().opcode == "dynamic-update-slice"):
            # Updated in place: only the update is written.
            updater = inst if fused is None else fused.root_instruction()
            owner = comp if fused is None else fused
            out = shape_bytes(owner.by_name[updater.operands[1]].shape, hbm_only=True)
        reads = 0.0
        for k, operand in enumerate(inst.operands):
            full = (
                shape_bytes(comp.by_name[operand].shape, hbm_only=True)
                if operand in comp.by_name
                else 0
            )
            if fused is not None:
                full = min(full, _parameter_read_bytes(fused, k, full))
            elif inst.opcode in ("dynamic-slice", "slice") and k == 0:
                full = out
            elif inst.opcode == "dynamic-update-slice" and k == 0:
                full = 0
            reads += full
        return out + reads

    def collective(self, inst: Instruction, comp: Computation, order: dict, multiplier: int):
        if inst.opcode == "send" and "xla_megascale_runtime" in inst.attrs:
            transfer = re.search(r'_xla_megascale_transfer_type="(\w+)"', inst.attrs)
            kind = _MEGASCALE_KIND.get(transfer.group(1) if transfer else "", "collective-permute")
            size = shape_bytes(comp.by_name[inst.operands[0]].shape)
            done = self._done(comp, inst, "send-done")
            return Collective(
                inst.name,
                kind,
                "dcn",
                self.pods,
                size * _RING_FACTOR[kind](self.pods),
                multiplier,
                self._overlapped(comp, inst, done, order),
            )
        kind = inst.opcode.removesuffix("-start")
        if kind not in COLLECTIVE_KINDS:
            return None
        inputs = inst.operands[:1] if kind == "collective-permute" else inst.operands
        size = sum(shape_bytes(comp.by_name[o].shape) for o in inputs if o in comp.by_name)
        groups = _replica_groups(inst, self.partitions)
        n = max(len(g) for g in groups)
        # A compiled multi-pod TPU program is one pod's program (its cross-pod traffic is the
        # send/recv above); a program over several pods' devices crosses pods by device id.
        per_pod = self.devices_per_pod
        crosses = per_pod is not None and any(len({d // per_pod for d in g}) > 1 for g in groups)
        done = self._done(comp, inst, kind + "-done") if inst.opcode.endswith("-start") else None
        return Collective(inst.name, kind, "dcn" if crosses else "ici", n,
                          size * _RING_FACTOR[kind](n), multiplier,
                          self._overlapped(comp, inst, done, order))

    def fused_collective(self, inst: Instruction, comp: Computation, order: dict,
                         multiplier: int) -> Collective | None:
        """A fusion that runs a collective: on TPU a reduce-scatter is compiled as a fusion
        whose all-reduce is sliced to the chip's shard ("all-reduce-scatter"). Counted as the
        reduce-scatter it is; synchronous unless an async wrapper around it says otherwise."""
        if inst.opcode != "fusion":
            return None
        for callee in self._callees(inst):
            fused = self.computations[callee]
            inner = next((i for i in fused.instructions if i.opcode in COLLECTIVE_KINDS), None)
            if inner is None:
                continue
            counted = self.collective(inner, fused, {}, multiplier)
            # The fusion returns only the chip's slices (one per operand when several
            # gradients are reduced together): smaller than what its all-reduce sums.
            if inner.opcode == "all-reduce" and shape_bytes(inst.shape) < shape_bytes(inner.shape):
                counted.kind = "reduce-scatter"
                counted.bytes_per_chip *= _RING_FACTOR["reduce-scatter"](counted.group_size) / \
                    _RING_FACTOR["all-reduce"](counted.group_size)
            counted.name, counted.overlapped = inst.name, False
            return counted
        return None

    @staticmethod
    def _done(comp: Computation, start: Instruction, opcode: str) -> Instruction | None:
        return next(
            (i for i in comp.instructions if i.opcode == opcode and start.name in i.operands), None
        )

    @staticmethod
    def _overlapped(comp: Computation, start: Instruction, done: Instruction | None,
                    order: dict) -> bool:
        """True when the schedule runs compute between an async collective's start and done."""
        if done is None:
            return False
        between = comp.instructions[order[start.name] + 1: order[done.name]]
        return any(i.opcode in _COMPUTE for i in between)


def _parameter_read_bytes(fused: Computation, index: int, full: float) -> float:
    """Bytes a fusion reads of its parameter `index`: a slice's size if it is only sliced."""
    param = next(
        (i for i in fused.instructions if i.opcode == "parameter" and i.args == str(index)), None
    )
    if param is None:
        return full
    users = [i for i in fused.instructions if param.name in i.operands]
    if users and all(
        u.opcode in ("dynamic-slice", "slice") and u.operands[0] == param.name for u in users
    ):
        return sum(shape_bytes(u.shape, hbm_only=True) for u in users)
    if users and all(
        u.opcode == "dynamic-update-slice" and u.operands[0] == param.name for u in users
    ):
        return 0.0  # the buffer updated in place is not read
    return full


def analyze(hlo_text: str, peak_flops: float, hbm_bandwidth: float, pods: int = 1,
            devices_per_pod: int | None = None) -> StepCost:
    """Per-chip FLOPs, HBM bytes and collectives of one execution of a compiled module.

    pods: pods the job spans (cross-pod transfers of a TPU multislice program are send/recv
    pairs between them); devices_per_pod: set when one program spans several pods' devices
    (e.g. CPU devices posing as pods), so that collectives are classified by device id.
    """
    walker = _Walker(hlo_text, peak_flops, hbm_bandwidth, pods, devices_per_pod)
    walker.walk(walker.entry, 1)
    return walker.cost


def summary(cost: StepCost) -> dict:
    """Collective bytes per chip per step by network and kind, and the overlapped share."""
    table: dict = defaultdict(lambda: {"bytes": 0.0, "count": 0, "overlapped_bytes": 0.0})
    for c in cost.collectives:
        row = table[f"{c.network}/{c.kind}"]
        row["bytes"] += c.bytes_per_chip * c.multiplier
        row["count"] += c.multiplier
        row["overlapped_bytes"] += c.bytes_per_chip * c.multiplier if c.overlapped else 0.0
    return {key: dict(row) for key, row in table.items()}
