"""Which candidate tensor is a Keras layer's output: TF name scopes, graph outputs, layout and fusion.

tf2onnx and the TFLite converter both start from the SavedModel, whose ops sit in name scopes
`<model>_1/<layer>_1/<op>` (Keras adds the same `_<n>` suffix to every scope of one trace). ONNX keeps them in node
and tensor names (`StatefulPartitionedCall/<model>_1/conv2_1/Relu:0`); TFLite names a fused op's output after every
op it replaced, joined by `;` (`<model>_1/act1_1/Relu;<model>_1/bn1_1/...;<model>_1/conv1_1/convolution`).

- A tensor belongs to the deepest layer its name scopes name (a fused Conv+BN+ReLU output is the ReLU's); the
  graph's outputs belong to the layers that produce the contract's outputs.
- A layer's counterpart is the last tensor it owns whose shape is the Keras output's up to unit dimensions and a
  permutation of the non-batch axes (tf2onnx computes convolutions channels-first): the values are compared after
  transposing them back, choosing the permutation that fits best when several shapes agree.
- A layer without a tensor of its own is `fused` into the layer whose fused tensor names it, or whose op follows it
  in a single chain (tf2onnx folds Conv+BN into one unnamed Conv), `identity` when Keras' own output equals its
  input (Dropout at inference), else it has `no counterpart`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

from .graph import KerasGraph, LayerNode
from .runtime import Tensor

_SCOPE_NUMBER = re.compile(r"_\d+$")
MAX_PERMUTED_AXES = 5
COMPARED, FUSED, IDENTITY, NONE, SKIPPED = "compared", "fused", "identity", "no counterpart", "not compared"


class ScopeIndex:
    """Maps TF name-scope strings to the graph's nodes by the layer names they contain."""

    def __init__(self, graph: KerasGraph):
        self.graph = graph
        self._nodes: dict[str, LayerNode] = {}
        for node in graph.nodes:
            self._nodes.setdefault(node.layer_name, node)  # a shared layer's scope is its first call's
        self._model = getattr(graph.model, "name", "") or ""
        self._suffix = "_1"

    def calibrate(self, scope_lists: list[list[str]]) -> None:
        """Learn the suffix the trace gave every scope (`_1` for Keras 3 SavedModels) from the names seen."""
        votes: dict[str, int] = {}
        for scopes in scope_lists:
            for segment in {segment for scope in scopes for segment in self._segments(scope)}:
                for name in self._nodes:
                    rest = segment[len(name):] if segment.startswith(name) else None
                    if rest is not None and (rest == "" or _SCOPE_NUMBER.fullmatch(rest)):
                        votes[rest] = votes.get(rest, 0) + 1
        if votes:
            self._suffix = max(votes, key=lambda rest: (votes[rest], rest == "_1"))

    def _segments(self, scope: str) -> list[str]:
        parts = scope.split("/")
        for position, part in enumerate(parts[:-1]):
            if self._model and (part == self._model or _SCOPE_NUMBER.sub("", part) == self._model):
                return [parts[position + 1]]
        return parts[:-1]

    def node_of(self, segment: str) -> LayerNode | None:
        if self._suffix and segment.endswith(self._suffix) and segment[:-len(self._suffix)] in self._nodes:
            return self._nodes[segment[:-len(self._suffix)]]
        if segment in self._nodes:
            return self._nodes[segment]
        return self._nodes.get(_SCOPE_NUMBER.sub("", segment))

    def nodes_in(self, scopes: list[str]) -> list[LayerNode]:
        """The nodes the scope strings name, each scope contributing its first layer segment."""
        found = {}
        for scope in scopes:
            for segment in self._segments(scope):
                node = self.node_of(segment)
                if node is not None:
                    found[node.index] = node
                    break
        return list(found.values())

    def names_a_layer(self, scopes: list[str]) -> bool:
        return bool(self.nodes_in(scopes))

    def owner(self, scopes: list[str]) -> str | None:
        """The deepest node the scopes name (a fused op's output is its last layer's), or None."""
        nodes = self.nodes_in(scopes)
        return max(nodes, key=lambda node: node.index).name if nodes else None

    def consumers(self, name: str) -> list[str]:
        """The nodes that read node `name`'s output."""
        index = next((node.index for node in self.graph.nodes if node.name == name), None)
        return [node.name for node in self.graph.nodes if index is not None and index in node.producers]


@dataclass
class Match:
    node: LayerNode
    status: str
    tensor: Tensor | None = None
    aligned: np.ndarray | None = None  # the candidate's values in the Keras output's layout
    layout: str | None = None  # how the candidate's layout was mapped ("same", "NCHW→NHWC", ...)
    fused_into: str | None = None
    note: str = ""


def align(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, str] | None:
    """The candidate in the reference's layout (unit dims dropped, non-batch axes permuted), or None."""
    if candidate.ndim == 0 or reference.ndim == 0 or candidate.shape[0] != reference.shape[0]:
        return None
    if candidate.size != reference.size:
        return None
    batch = reference.shape[0]
    wanted = [d for d in reference.shape[1:] if d != 1]
    have = [d for d in candidate.shape[1:] if d != 1]
    if sorted(wanted) != sorted(have):
        return None
    squeezed = candidate.reshape(batch, *have)
    rank = len(have)
    identity, channels_last = tuple(range(rank)), (*range(1, rank), 0)
    # tf2onnx's channels-first tensors: the usual two layouts first, any other permutation only when neither fits
    preferred = [identity] + ([channels_last] if rank >= 2 else [])
    others = itertools.permutations(range(rank)) if rank <= MAX_PERMUTED_AXES else []
    for group in (preferred, others):
        options = [(permutation, squeezed.transpose(0, *[axis + 1 for axis in permutation]).reshape(reference.shape))
                   for permutation in group if [have[axis] for axis in permutation] == wanted]
        if options:
            permutation, moved = min(options, key=lambda option: (_max_error(option[1], reference),
                                                                  option[0] != identity))
            return moved, _layout_name(permutation, rank)
    return None


def _max_error(values: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(values.astype(np.float64) - reference))) if values.size else 0.0


def _layout_name(permutation: tuple[int, ...], rank: int) -> str:
    if permutation == tuple(range(rank)):
        return "same"
    if rank >= 2 and permutation == (*range(1, rank), 0):
        return "channels-first→channels-last" if rank != 3 else "NCHW→NHWC"
    return f"axes permuted {permutation}"


def match_layers(graph: KerasGraph, index: ScopeIndex, tensors: list[Tensor],
                 reference: dict[str, np.ndarray]) -> list[Match]:
    """One Match per graph node, in execution order."""
    owned: dict[int, list[Tensor]] = {}
    named_by: dict[int, set[int]] = {}  # node index -> owners of fused tensors that name it
    output_node = {node.output: node.index for node in graph.nodes if node.output}
    for tensor in tensors:
        nodes = index.nodes_in(tensor.scopes)
        owner = output_node.get(tensor.output) if tensor.output else max((n.index for n in nodes), default=None)
        if owner is None:
            continue
        owned.setdefault(owner, []).append(tensor)
        for node in nodes:
            if node.index != owner:
                named_by.setdefault(node.index, set()).add(owner)
    matches = [_compare_one(node, owned.get(node.index, []), reference) for node in graph.nodes]
    for match in matches:
        if match.status == NONE and not match.note:
            _explain_missing(match, matches, named_by, graph, reference)
    return matches


def _compare_one(node: LayerNode, tensors: list[Tensor], reference: dict[str, np.ndarray]) -> Match:
    expected = reference.get(node.name)
    if node.multiple_outputs or expected is None:
        return Match(node, SKIPPED, note="a layer with several outputs: not compared")
    for tensor in reversed(tensors):
        aligned = align(expected, tensor.values)
        if aligned is not None:
            return Match(node, COMPARED, tensor, aligned[0], aligned[1])
    if tensors:
        shapes = ", ".join(str(list(t.values.shape)) for t in tensors[-3:])
        return Match(node, NONE, note=f"its tensors have other shapes ({shapes}) than the Keras output "
                                      f"{list(expected.shape)}")
    return Match(node, NONE)


def _explain_missing(match: Match, matches: list[Match], named_by: dict[int, set[int]], graph: KerasGraph,
                     reference: dict[str, np.ndarray]) -> None:
    node = match.node
    owners = sorted(owner for owner in named_by.get(node.index, ()) if matches[owner].status == COMPARED)
    if owners:
        match.status, match.fused_into = FUSED, matches[owners[0]].node.name
        match.note = f"fused into {match.fused_into}'s op (its tensor names both; compared there)"
        return
    producers = [p for p in node.producers if p >= 0]
    value = reference.get(node.name)
    if len(node.producers) == 1 and value is not None:
        source = reference.get(graph.nodes[producers[0]].name) if producers else None
        if source is not None and source.shape == value.shape and np.array_equal(source, value):
            match.status, match.note = IDENTITY, "identity at inference (removed by the converter)"
            return
    follower = _chain_follower(node, matches, graph)
    if follower is not None:
        match.status, match.fused_into = FUSED, follower
        match.note = f"no tensor of its own: folded into the op computed at {follower} (compared there)"
        return
    match.note = "no counterpart in the candidate (its op was removed or renamed by the converter)"


def _chain_follower(node: LayerNode, matches: list[Match], graph: KerasGraph) -> str | None:
    """The first compared layer downstream, following single-input, single-consumer links."""
    current = node
    while True:
        consumers = [n for n in graph.nodes if current.index in n.producers]
        if len(consumers) != 1 or len(consumers[0].producers) != 1:
            return None
        current = consumers[0]
        if matches[current.index].status == COMPARED:
            return current.name
        if matches[current.index].status != NONE:
            return None
