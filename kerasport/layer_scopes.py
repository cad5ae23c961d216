"""Which Keras layer a converted graph's node belongs to, from the TF name scopes in its names (no TF here).

tf2onnx and the TFLite converter both start from the SavedModel, whose ops sit in name scopes
`<model>_1/<layer>_1/<op>` (Keras adds the same `_<n>` suffix to every scope of one trace). ONNX keeps them in node
and tensor names (`StatefulPartitionedCall/<model>_1/conv2_1/Relu:0`); TFLite names a fused op's output after every
op it replaced, joined by `;`. Shared by parity's `--explain` (which compares layers) and export's int8 recipe
search (which keeps layers in float): both map Keras layers to graph nodes the same way.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

_SCOPE_NUMBER = re.compile(r"_\d+$")


@dataclass
class LayerNode:
    """One call of a layer (an operation) in the model's graph, in execution order."""

    index: int
    name: str  # the layer's name; `name#k` for the k-th call of a shared layer
    layer_name: str
    kind: str  # the layer's class name
    producers: list[int] = field(default_factory=list)  # indices of the nodes whose outputs it reads (-1: input)
    output: str | None = None  # the contract output it produces, if any
    multiple_outputs: bool = False


class ScopeIndex:
    """Maps TF name-scope strings to the graph's nodes by the layer names they contain."""

    def __init__(self, nodes: list[LayerNode], model_name: str = ""):
        self.nodes = list(nodes)
        self._nodes: dict[str, LayerNode] = {}
        for node in self.nodes:
            self._nodes.setdefault(node.layer_name, node)  # a shared layer's scope is its first call's
        self._model = model_name or ""
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

    def output_layer(self, output: str) -> str | None:
        """The node that produces the contract output `output` (when the nodes record it)."""
        return next((node.name for node in self.nodes if node.output == output), None)

    def consumers(self, name: str) -> list[str]:
        """The nodes that read node `name`'s output."""
        index = next((node.index for node in self.nodes if node.name == name), None)
        return [node.name for node in self.nodes if index is not None and index in node.producers]


def keras_archive_layers(path: Path, output_names: list[str] | tuple[str, ...] = ()) -> tuple[list[LayerNode], str]:
    """The top-level layers of a `.keras` archive (its `config.json`; no Keras needed) and the model's name.

    Input layers are left out (they own no op). Producers are not recorded: callers that need the graph's edges
    trace the model itself (parity's KerasGraph). The layers named by the config's `output_layers` (a Sequential
    model: its last layer) get `output` set to `output_names`, in order (the contract's outputs).

    Raises:
        UsageError: the file is not a Keras archive with a functional or sequential model config.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        layers = config["config"]["layers"]
        model_name = str(config["config"].get("name") or "")
        kept = [layer for layer in layers if layer.get("class_name") != "InputLayer"]
        names = [(str(layer["config"]["name"]), str(layer["class_name"])) for layer in kept]
        # A Sequential model is a chain; a functional one names each call's inputs in `inbound_nodes`.
        reads = [_history_names(layer.get("inbound_nodes")) for layer in kept] if config.get(
            "class_name") != "Sequential" else [[names[i - 1][0]] if i else [] for i in range(len(names))]
        outputs = _output_layers(config["config"].get("output_layers")) or [names[-1][0]]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as error:
        raise UsageError(f"{path}: not a Keras archive with a layer list in config.json ({error}); expected a "
                         f"functional or sequential model saved by Keras 3") from None
    produces = dict(zip(outputs, output_names, strict=False))
    position = {name: index for index, (name, _) in enumerate(names)}
    nodes = [LayerNode(index, name, name, kind, producers=[position.get(read, -1) for read in reads[index]],
                       output=produces.get(name)) for index, (name, kind) in enumerate(names)]
    return nodes, model_name


def _history_names(value) -> list[str]:
    """The layer names in every `keras_history` under a layer's `inbound_nodes` (its inputs), in order."""
    found: list[str] = []
    if isinstance(value, dict):
        history = value.get("keras_history")
        if isinstance(history, list) and history and isinstance(history[0], str):
            found.append(history[0])
        for item in value.values():
            found += _history_names(item)
    elif isinstance(value, list):
        for item in value:
            found += _history_names(item)
    return list(dict.fromkeys(found))


def _output_layers(entries) -> list[str]:
    """Keras writes one output as `[name, node, tensor]` and several as a list of those."""
    if not entries:
        return []
    if isinstance(entries[0], str):
        return [entries[0]]
    return [str(entry[0]) for entry in entries]
