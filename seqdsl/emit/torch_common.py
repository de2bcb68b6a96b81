"""What the torch emitter and its cell-block emitter share (both import this module;
it imports neither): the names generated modules must not take, the activation
expressions, the model's class name.

The run-time code itself is :mod:`seqdsl.runtime.torch`; this module reads its
top-level names from the source with :mod:`ast` (it imports no framework).
"""

from __future__ import annotations

import ast
import importlib.util
import keyword
from functools import cache
from pathlib import Path

from ..checker import CheckedModel

__all__ = [
    "ACTIVATION_EXPR",
    "MODULE_ATTRS",
    "RUNTIME",
    "class_name",
    "q",
    "runtime_names",
]

#: the module generated code imports its run-time definitions from
RUNTIME = "seqdsl.runtime.torch"
#: where ``pad()``'s helper lives (shared by every backend)
RUNTIME_COMMON = "seqdsl.runtime.common"

#: activation name -> the expression of a torch callable (Keras 3's definitions);
#: None for linear (nothing to apply). Bare names are run-time functions.
ACTIVATION_EXPR: dict[str, str | None] = {
    "linear": None,
    "relu": "torch.relu",
    "sigmoid": "torch.sigmoid",
    "tanh": "torch.tanh",
    "softmax": "softmax",
    "log_softmax": "log_softmax",
    "softplus": "softplus",
    "softsign": "F.softsign",
    "elu": "F.elu",
    "selu": "F.selu",
    "gelu": "F.gelu",
    "silu": "F.silu",
    "swish": "F.silu",
    "exponential": "torch.exp",
    "hard_sigmoid": "hard_sigmoid",
    "relu6": "F.relu6",
    "leaky_relu": "leaky_relu",
    "mish": "F.mish",
}

#: attributes of nn.Module and of the generated model: no layer may take these names
MODULE_ATTRS = frozenset(
    [
        "T_destination",
        "add_module",
        "apply",
        "bfloat16",
        "buffers",
        "call_super_init",
        "children",
        "compile",
        "cpu",
        "cuda",
        "double",
        "dump_patches",
        "eval",
        "extra_repr",
        "float",
        "forward",
        "get_buffer",
        "get_extra_state",
        "get_parameter",
        "get_submodule",
        "half",
        "ipu",
        "load_state_dict",
        "modules",
        "mtia",
        "named_buffers",
        "named_children",
        "named_modules",
        "named_parameters",
        "parameters",
        "register_backward_hook",
        "register_buffer",
        "register_forward_hook",
        "register_forward_pre_hook",
        "register_full_backward_hook",
        "register_full_backward_pre_hook",
        "register_load_state_dict_post_hook",
        "register_load_state_dict_pre_hook",
        "register_module",
        "register_parameter",
        "register_state_dict_post_hook",
        "register_state_dict_pre_hook",
        "requires_grad_",
        "set_extra_state",
        "set_submodule",
        "share_memory",
        "state_dict",
        "to",
        "to_empty",
        "train",
        "training",
        "type",
        "xpu",
        "zero_grad",
        "WEIGHTS",
        "INPUTS",
        "PADS",
        "debug",
        "anchor",
        "pad",
        "load_canonical",
        "canonical_weights",
        "reset_states",
    ]
)


def _top_level_names(module: str) -> frozenset[str]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    names.discard("annotations")
    names.discard("__all__")
    return frozenset(names)


@cache
def runtime_names() -> frozenset[str]:
    """Every name the torch runtime binds at top level (its definitions and its imports):
    a generated module imports some of them, a standalone one holds them, so no value,
    class or helper of a generated module may take one."""
    return _top_level_names(RUNTIME) | _top_level_names(RUNTIME_COMMON)


def q(s: str) -> str:
    """A double-quoted Python string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def class_name(model: CheckedModel) -> str:
    """The name of the model's class in the emitted module."""
    name = model.name
    if name in runtime_names() or keyword.iskeyword(name):
        name += "Model"
    return name
